"""Clonezilla images made by Clonezilla itself (``ocs-sr`` in batch mode), for the
tests and the benchmarks.

``ocs-sr`` images disks by their ``/dev/sdX`` names and finds them in
``/proc/partitions``, and this kernel makes no partition devices for loop devices.
So it runs in a private mount namespace (``unshare -m``): a private ``/dev`` (a copy
of the real one) gets ``/dev/sdz`` for the disk's loop device and ``/dev/sdzN`` for a
loop device over each partition, a file listing them is bound over
``/proc/partitions``, and the image directory is bound over ``/home/partimag``.
Nothing of this is seen outside the namespace, so concurrent runs do not collide.

Under this arrangement ``parted`` sees no disk geometry, so ``<disk>-pt.parted`` is
empty and ``-gpt-2nd`` is not saved: the importer takes the size from the primary
GPT header (GPT) or the partitions' end (MBR) then, as it would for such images.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from blockvault.errors import UsageError
from blockvault_demo.sample import BuiltDisk

__all__ = ["DISK_NAME", "save_with_ocs_sr"]

DISK_NAME = "sdz"  # the name the disk has inside the namespace

_SCRIPT = r"""
set -e
work="$1"; shift
mount -t tmpfs tmpfs "$work/dev"
cp -a /dev/. "$work/dev/" 2>/dev/null || true
mount --rbind /dev/pts "$work/dev/pts"
mount --bind "$work/dev" /dev
while read -r name loop; do
    read -r major minor < <(stat -c '%t %T' "$loop")
    rm -f "/dev/$name"
    mknod "/dev/$name" b $((16#$major)) $((16#$minor))
done < "$work/devices"
mount --bind "$work/partitions" /proc/partitions
mkdir -p /home/partimag
mount --bind "$work/images" /home/partimag
# ocs-sr runs os-prober and linux-boot-prober to describe the machine; their grub-mount
# daemons would outlive the namespace and keep the loop devices busy
for prober in os-prober linux-boot-prober; do
    if command -v "$prober" >/dev/null; then mount --bind /bin/true "$(command -v "$prober")"; fi
done
exec ocs-sr "$@"
"""


def _loop(path: Path, offset: int = 0, size: int = 0) -> str:
    args = ["losetup", "-f", "--show", "-r", "-o", str(offset)]
    if size:
        args += ["--sizelimit", str(size)]
    return subprocess.run(
        [*args, str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


@contextlib.contextmanager
def _loops(disk: BuiltDisk) -> Iterator[list[tuple[str, str, int]]]:
    """(name, loop device, size) of the disk and each partition, detached afterwards."""
    made: list[tuple[str, str, int]] = []
    try:
        made.append((DISK_NAME, _loop(disk.path), disk.size))
        for part in disk.partitions:
            loop = _loop(disk.path, part.offset, part.size)
            made.append((f"{DISK_NAME}{part.number}", loop, part.size))
        yield made
    finally:
        for _, loop, _ in made:
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def save_with_ocs_sr(
    disk: BuiltDisk, images: Path, name: str, options: Sequence[str] = ("-z1p",)
) -> Path:
    """Save ``disk`` (an image file) with ``ocs-sr savedisk`` into ``images/name`` and
    return that directory. ``options``: ocs-sr's own (compression ``-zN``, split
    ``-i MB``, checksums ``-gm``...). Needs root and the ``clonezilla`` package."""
    if os.geteuid() != 0 or shutil.which("ocs-sr") is None:
        raise UsageError("saving with ocs-sr needs root and the clonezilla package")
    images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bv-ocs-") as tmp, _loops(disk) as loops:
        work = Path(tmp)
        (work / "dev").mkdir()
        os.symlink(images.resolve(), work / "images")
        (work / "devices").write_text("".join(f"{n} {loop}\n" for n, loop, _ in loops))
        lines = ["major minor  #blocks  name", ""]
        for n, loop, size in loops:
            number = os.stat(loop).st_rdev
            lines.append(f" {os.major(number):4d} {os.minor(number):7d} {size // 1024:10d} {n}")
        (work / "partitions").write_text("\n".join(lines) + "\n")
        command = [
            "unshare", "-m", "--propagation", "private", "bash", "-c", _SCRIPT, "ocs", str(work),
            "-b", "-q2", "-j2", "-sfsck", "-scs", "-senc", "-p", "true",
            *(() if "-i" in options else ("-i", "0")), *options, "savedisk", name, DISK_NAME,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        out = images / name
        if done.returncode or not (out / "parts").is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise UsageError(f"ocs-sr failed ({done.returncode}): " + " | ".join(tail))
        return out
