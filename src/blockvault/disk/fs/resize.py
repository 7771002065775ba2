"""Grow a filesystem in place to fill its (already grown) partition, with its own tool.

The kernel here scans no partitions of loop devices, so the partition is reached
through a loop device over exactly its bytes (``losetup -o OFFSET --sizelimit SIZE``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blockvault.disk.device import open_device
from blockvault.disk.fs.fat_grow import grow_fat
from blockvault.errors import DeviceError, UsageError

__all__ = ["can_grow", "can_shrink", "grow_filesystem", "kept_size", "shrink_filesystem"]


def can_grow(fs: str) -> str | None:
    """None when ``fs`` can be grown, else why not (checked before anything is written)."""
    if fs.startswith(("ext", "fat")) or fs == "ntfs":
        return None
    if fs == "btrfs":
        return "btrfs grows only while mounted ('btrfs filesystem resize max MOUNTPOINT')"
    return f"a {fs or 'unknown'} partition has no filesystem blockvault can grow"


def grow_filesystem(path: str | os.PathLike[str], offset: int, size: int, fs: str) -> str:
    """Grow the ``fs`` filesystem at ``offset`` of ``path`` to ``size`` bytes; a report line."""
    reason = can_grow(fs)
    if reason:
        raise UsageError(reason)
    if fs.startswith("fat"):  # our own code (fat_grow.py says why): no loop device needed
        with open_device(path, write=True) as device:
            done = grow_fat(device, offset, size)
            device.sync()
        return done
    if os.geteuid() != 0:
        raise UsageError("growing a filesystem needs root (a loop device over the partition)")
    with _loop(Path(path), offset, size) as device:
        if fs.startswith("ext"):
            _run("e2fsck", "-f", "-y", device, ok=(0, 1))
            _run("resize2fs", device)
        else:
            _run("ntfsresize", "--force", "--force", device, stdin="y\n")
    return f"{fs} filesystem grown to {size} bytes"


def kept_size(fs: str) -> str | None:
    """Why a filesystem that may not shrink keeps its size, where the user can help."""
    if fs == "btrfs":
        return (
            "btrfs shrinks only while mounted, so its partition keeps its size (shrink it "
            "with 'btrfs filesystem resize' on the source, then back up again)"
        )
    return None


def can_shrink(fs: str) -> bool:
    """True for the filesystems shrunk here (ext2/3/4 with resize2fs, NTFS with ntfsresize)."""
    return fs.startswith("ext") or fs == "ntfs"


def shrink_filesystem(path: str | os.PathLike[str], size: int, fs: str) -> None:
    """Shrink the ``fs`` filesystem filling the file ``path`` (a scratch copy) to ``size``
    bytes; first asks the tool for its minimum and refuses, missing bytes given, below it."""
    if fs.startswith("ext"):
        _run("e2fsck", "-f", "-y", path, ok=(0, 1))
        blocks = _run("resize2fs", "-P", path).splitlines()[-1].split()[-1]
        block = next(
            int(line.split()[-1])
            for line in _run("dumpe2fs", "-h", path).splitlines()
            if line.startswith("Block size:")
        )
        _refuse_below(fs, int(blocks) * block, size)
        _run("resize2fs", path, f"{size // 1024}K")
    elif fs == "ntfs":
        info = _run("ntfsresize", "--force", "--info", path)
        found = re.search(r"resize at (\d+) bytes", info)
        if found is None:
            raise DeviceError(f"ntfsresize gave no minimum size: {info[-200:]}", path=path)
        _refuse_below(fs, int(found.group(1)), size)
        _run("ntfsresize", "--force", "--force", "--size", str(size), path, stdin="y\n")
    else:
        raise UsageError(f"a {fs or 'unknown'} filesystem cannot be shrunk")


def _refuse_below(fs: str, minimum: int, size: int) -> None:
    if minimum > size:
        raise UsageError(
            f"the {fs} filesystem cannot shrink to {size} bytes: its tool needs {minimum} "
            f"({minimum - size} bytes missing); nothing was written to the target"
        )


@contextmanager
def _loop(path: Path, offset: int, size: int) -> Iterator[str]:
    device = _run("losetup", "--find", "--show", "-o", str(offset), "--sizelimit", str(size), path)
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def _run(
    *args: str | os.PathLike[str], stdin: str | None = None, ok: tuple[int, ...] = (0,)
) -> str:
    command = [os.fspath(a) for a in args]
    done = subprocess.run(command, capture_output=True, text=True, input=stdin, check=False)
    if done.returncode not in ok:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise DeviceError(f"{command[0]} failed: {last}", path=command[-1])
    return done.stdout.strip()
