"""A real small Debian system on a disk image, installed for one machine: the
subject of the universal-restore test (``restore --adapt``).

Glossary:

debian disk
    A 1 GiB GPT image: a BIOS boot partition, an empty EFI System Partition (as
    installers leave one) and an ext4 root that mmdebstrap filled with Debian
    (minbase, a kernel, systemd, GRUB for BIOS and the GRUB UEFI binaries). GRUB is
    installed for BIOS only, the initramfs holds only the virtio disk's drivers
    (``MODULES=list``: ``dep`` cannot see the target disk from a build chroot), and
    ``fstab`` names the ESP by its kernel name ``/dev/vda2`` as old installers did.
    So it boots on the machine it was made for (BIOS, virtio disk) and on no other
    until adapted.
first boot
    The build boots the disk once under QEMU to its login prompt, so what is imaged
    is a system that ran, and the prompt's banner carries the disk's random token.
cache
    Keyed by the package list, the customize hooks and the layout; built under a
    temporary name and renamed when whole (first build: minutes, downloads Debian).

Needs root (mmdebstrap in root mode, loop devices); the library never prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from blockvault.errors import UsageError
from blockvault.interop.boot import Machine, watch_guest
from blockvault.pipeline.adapt_system import block_device, partitions, system_chroot
from blockvault.rescue.build import package_list

__all__ = ["DISK_BYTES", "DebianDisk", "build_debian_disk"]

DISK_BYTES: Final = 1 << 30
SUITE: Final = "bookworm"
PACKAGES: Final = (
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
    "systemd-sysv",
    "udev",
    "kmod",
    "grub-pc",
    "grub-efi-amd64-bin",
)
# the drivers of the machine it is made for: a virtio disk holding ext4
VIRTIO_ONLY: Final = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
LAYOUT: Final = (
    "label: gpt\n"
    "size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
    "size=48MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
    "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
)
GRUB_DEFAULTS: Final = (
    "GRUB_DEFAULT=0\n"
    "GRUB_TIMEOUT=0\n"
    "GRUB_DISTRIBUTOR=Debian\n"
    'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
    'GRUB_CMDLINE_LINUX="console=ttyS0,115200"\n'
    'GRUB_TERMINAL="console serial"\n'
    'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
)
FIRST_BOOT_TIMEOUT: Final = 900.0  # seconds: systemd to its login prompt under TCG
BANNER: Final = "BLOCKVAULT-ADAPT"


@dataclass(frozen=True)
class DebianDisk:
    path: Path  # in the cache: read it, do not write it
    token: str  # shown in the login banner: "BLOCKVAULT-ADAPT <token>"
    root_uuid: str
    esp_uuid: str  # the FAT volume id as blkid shows it, XXXX-XXXX
    first_boot_seconds: float


def _hooks() -> list[str]:
    drops = package_list().drops
    modules = "\\n".join(VIRTIO_ONLY)
    return [
        'echo bvadapt > "$1/etc/hostname"',
        *(f'cd "$1" && rm -rf -- {drop}' for drop in drops),
        'for k in "$1"/usr/lib/modules/*; do chroot "$1" depmod -a "${k##*/}"; done',
        'echo MODULES=list > "$1/etc/initramfs-tools/conf.d/machine.conf"',
        f"printf '{modules}\\n' >> \"$1/etc/initramfs-tools/modules\"",
        'chroot "$1" update-initramfs -u -k all',
        f"printf '{GRUB_DEFAULTS}' > \"$1/etc/default/grub\"",
    ]


def build_debian_disk(cache: Path) -> DebianDisk:
    """The cached Debian disk, built (and booted once) if missing."""
    for tool in ("mmdebstrap", "sfdisk", "mkfs.ext4", "mkfs.fat", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            raise UsageError(f"{tool} is not installed (scripts/setup installs it)")
    cache = cache.expanduser()
    hooks = _hooks()
    key = hashlib.sha256("\0".join([SUITE, *PACKAGES, *hooks]).encode()).hexdigest()[:16]
    root = _entry(cache / f"debian-root-{key}", "root", lambda tmp: _install(tmp, hooks))
    key = hashlib.sha256(f"{key}\0{LAYOUT}".encode()).hexdigest()[:16]
    disk = _entry(cache / f"debian-disk-{key}", "disk.json", lambda tmp: _build(tmp, root))
    info = json.loads((disk / "disk.json").read_text())
    return DebianDisk(disk / "disk.img", **info)


def _entry(entry: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """A cache entry (made by ``build`` in a temporary folder, renamed when whole)."""
    if (entry / marker).exists():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _run(*args: str | os.PathLike[str], input: str | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, input=input, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no message"]
        raise UsageError(f"debian disk: {Path(str(args[0])).name} failed: {last[0]}")
    return proc.stdout


def _install(tmp: Path, hooks: list[str]) -> None:
    _run(
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        '--aptopt=APT::Install-Recommends "false"',
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
        f"--include={','.join(PACKAGES)}",
        *(f"--customize-hook={hook}" for hook in hooks),
        SUITE,
        tmp / "root",
        package_list().mirror,
    )


def _build(tmp: Path, installed: Path) -> None:
    root, image = tmp / "root", tmp / "disk.img"
    _run("cp", "-a", installed / "root", root)
    token = secrets.token_hex(8)
    root_uuid, esp_serial = str(uuid.uuid4()), secrets.token_hex(4).upper()
    esp_uuid = f"{esp_serial[:4]}-{esp_serial[4:]}"
    (root / "etc" / "issue").write_text(f"{BANNER} {token}\n\n")
    (root / "etc" / "fstab").write_text(
        f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n/dev/vda2 /boot/efi vfat umask=0077 0 2\n"
    )
    (root / "boot" / "efi").mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as file:
        file.truncate(DISK_BYTES)
    _run("sfdisk", "--quiet", image, input=LAYOUT)
    with block_device(image) as loop:
        _run("mkfs.fat", "-i", esp_serial, f"{loop}p2")
        _run("mkfs.ext4", "-q", "-U", root_uuid, "-d", root, f"{loop}p3")
        parts = partitions(loop)
        with system_chroot(loop, parts, parts[2]) as (tree, _):
            for argv in (["grub-install", "--target=i386-pc", loop], ["update-grub"]):
                _run("chroot", tree, *argv)
    shutil.rmtree(root)
    check = watch_guest(
        Machine("bios", "tcg", memory=1024, cpus=1),
        image,
        disk_format="raw",
        markers=("login:",),
        timeout=FIRST_BOOT_TIMEOUT,
        console_log=tmp / "first-boot.console",
    )
    if not check.booted:
        raise UsageError(f"debian disk: the first boot stopped at: {check.last_line}")
    info = {
        "token": token,
        "root_uuid": root_uuid,
        "esp_uuid": esp_uuid,
        "first_boot_seconds": round(check.seconds, 1),
    }
    (tmp / "disk.json").write_text(json.dumps(info))
