"""Grow a filesystem in place to fill its (already grown) partition, with its own tool.

The kernel here scans no partitions of loop devices, so the partition is reached
through a loop device over exactly its bytes (``losetup -o OFFSET --sizelimit SIZE``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blockvault.disk.device import open_device
from blockvault.disk.fs.fat_grow import grow_fat
from blockvault.errors import DeviceError, UsageError

__all__ = ["can_grow", "grow_filesystem"]


def can_grow(fs: str) -> str | None:
    """None when ``fs`` can be grown, else why not (checked before anything is written)."""
    if fs.startswith(("ext", "fat")) or fs == "ntfs":
        return None
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
