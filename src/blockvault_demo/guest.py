"""Run a shell script inside a small QEMU guest that sees this machine's files.

Some tests need a kernel this host does not give them: device-mapper (LVM
snapshots, LUKS volumes opened), md RAID. This module boots the host's installed
distribution kernel (``find_kernel``) under QEMU with a busybox initramfs that
mounts the host's root filesystem **read-only** over virtio-9p and ``chroot``s into
it, so the guest runs the host's own Python, blockvault (``PYTHONPATH`` passes
through) and tools (lvm2, mdadm, mkfs.*) without installing anything.

Glossary:

work directory
    A host directory shared read-write and mounted in the guest at the same
    path, so paths in the script mean the same on both sides: the script, its
    output files and any repository the guest writes live there.
disks
    Image files attached as virtio disks, ``/dev/vda``, ``/dev/vdb``, ... in order.
exit line
    ``BLOCKVAULT-GUEST-EXIT <status>`` on the serial console: the script's exit
    status. No line (a panic, a hang until ``timeout``) is a failed run.

Invariants: the guest cannot change the host's files outside the work directory
(the root share is read-only); ``/tmp``, ``/run`` and ``/dev`` in the guest are its
own. Nothing here needs root on the host.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import blockvault
from blockvault.errors import UsageError
from blockvault_demo.sample_boot import build_initramfs, find_kernel

__all__ = ["GUEST_MODULES", "GuestRun", "run_in_guest"]

EXIT_LINE: Final = "BLOCKVAULT-GUEST-EXIT"
GUEST_MODULES: Final = (
    "virtio_pci",
    "virtio_blk",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "ext4",
    "xfs",
    "dm_mod",
    "dm_snapshot",
    "md_mod",
    "raid1",
    "dm_crypt",
    "ecb",
    "xts",
    "aes_generic",
    "algif_skcipher",
)
_MSIZE: Final = 512 * 1024  # 9p message size: fewer round trips for Python's imports

_INIT: Final = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "BLOCKVAULT-GUEST-FAIL $*"; poweroff -f; }
for m in $(cat /modules.order); do insmod "/modules/$m" || fail "insmod $m"; done
work=""
code=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        bv_work=*) work="${word#bv_work=}" ;;
        bv_code=*) code="${word#bv_code=}" ;;
    esac
done
mkdir -p /host
opts="trans=virtio,version=9p2000.L,msize=@MSIZE@"
mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || fail "mount hostroot"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs tmpfs /host/run
mount -t tmpfs tmpfs /host/tmp
mkdir -p "/host$work"
mount -t 9p -o "$opts" work "/host$work" || fail "mount work"
# blockvault's own source tree, read-only at its own path: a checkout under /tmp is
# hidden by the guest's /tmp, and the host's Python finds the package through it
mkdir -p "/host$code" 2>/dev/null
mount -t 9p -o "$opts,ro,cache=loose" code "/host$code" || fail "mount code"
chroot /host /bin/sh "$work/guest.sh" </dev/null
echo "BLOCKVAULT-GUEST-EXIT $?"
sync
poweroff -f
"""


@dataclass(frozen=True)
class GuestRun:
    status: int | None  # the script's exit status; None when the exit line never came
    console: str  # everything the guest wrote on its serial console

    @property
    def ok(self) -> bool:
        return self.status == 0


def run_in_guest(
    script: str,
    work: Path,
    *,
    disks: tuple[Path, ...] = (),
    env: dict[str, str] | None = None,
    memory: int = 768,
    timeout: float = 600.0,
) -> GuestRun:
    """Run ``script`` (sh) as root in a guest, with ``work`` shared at its own path and
    ``disks`` attached; ``env`` is exported first (the host's ``PATH`` and
    ``PYTHONPATH`` always are). Returns when the guest powers off, or at ``timeout``."""
    work = work.resolve()
    kernel = find_kernel()
    code = _source_root()
    python_path = [str(code), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    exported = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": "/root",
        "PYTHONPATH": ":".join(python_path),
        **(env or {}),
    }
    prelude = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exported.items())
    (work / "guest.sh").write_text(prelude + "cd /\n" + script)
    with tempfile.TemporaryDirectory(prefix="guest-") as tmp:
        initrd = Path(tmp) / "initrd.img"
        build_initramfs(
            kernel,
            Path(tmp) / "tree",
            initrd,
            modules=GUEST_MODULES,
            init=_INIT.replace("@MSIZE@", str(_MSIZE)),
        )
        command = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            str(memory),
            "-smp",
            "1",
            "-kernel",
            str(kernel.vmlinuz),
            "-initrd",
            str(initrd),
            "-append",
            f"console=ttyS0 panic=-1 quiet bv_work={work} bv_code={code}",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
            f"local,path={work},mount_tag=work,security_model=none,multidevs=remap",
            "-virtfs",
            f"local,path={code},mount_tag=code,security_model=none,readonly=on,multidevs=remap",
            "-nographic",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-no-reboot",
        ]
        for disk in disks:
            command += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
        try:
            proc = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            console = proc.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            console = (exc.stdout or b"").decode(errors="replace") + "\n[timed out]"
        except FileNotFoundError:
            raise UsageError(
                "qemu-system-x86_64 is missing: apt-get install qemu-system-x86"
            ) from None
    found = re.search(rf"{EXIT_LINE} (\d+)", console)
    return GuestRun(int(found.group(1)) if found else None, console)


def _source_root() -> Path:
    """The directory holding the ``blockvault`` package this process runs (``src`` of a
    checkout, or site-packages): shared with the guest so it runs the same code."""
    return Path(blockvault.__file__).resolve().parents[1]
