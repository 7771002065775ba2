"""Grow a filesystem in place to fill its (already grown) partition, with its own tool.

XFS grows only while mounted, so it is mounted on a private directory for
``xfs_growfs``; it never shrinks (``can_shrink`` is False: its partition keeps its size).

The kernel here scans no partitions of loop devices, so the partition is reached
through a loop device over exactly its bytes (``losetup -o OFFSET --sizelimit SIZE``).
An LVM2 physical volume (``lvm2``) is resized by rewriting its metadata
(disk/volumes/lvm_resize.py) and resizing its last logical volume's filesystem.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blockvault.disk.device import Device, Region, open_device
from blockvault.disk.fs.fat_grow import grow_fat
from blockvault.disk.fs.probe import probe
from blockvault.disk.volumes.lvm_resize import plan_resize, write_resized
from blockvault.errors import DeviceError, UsageError

__all__ = ["can_grow", "can_shrink", "grow_filesystem", "kept_size", "shrink_filesystem"]


def can_grow(fs: str) -> str | None:
    """None when ``fs`` can be grown, else why not (checked before anything is written)."""
    if fs.startswith(("ext", "fat")) or fs in ("ntfs", "xfs", "lvm2"):
        return None
    if fs == "btrfs":
        return "btrfs grows only while mounted ('btrfs filesystem resize max MOUNTPOINT')"
    return f"a {fs or 'unknown'} partition has no filesystem blockvault can grow"


def grow_filesystem(path: str | os.PathLike[str], offset: int, size: int, fs: str) -> str:
    """Grow the ``fs`` filesystem at ``offset`` of ``path`` to ``size`` bytes; a report line."""
    reason = can_grow(fs)
    if reason:
        raise UsageError(reason)
    if fs == "lvm2":
        return _grow_pv(path, offset, size)
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
        elif fs == "xfs":
            _grow_xfs(device)
        else:
            _run("ntfsresize", "--force", "--force", device, stdin="y\n")
    return f"{fs} filesystem grown to {size} bytes"


def _grow_xfs(device: str) -> None:
    """XFS grows only while mounted: mount it on a private directory (``nouuid``, as the
    source may be mounted here too), run ``xfs_growfs``, unmount."""
    with tempfile.TemporaryDirectory(prefix="blockvault-xfs-") as mountpoint:
        _run("mount", "-t", "xfs", "-o", "nouuid", device, mountpoint)
        try:
            _run("xfs_growfs", mountpoint)
        finally:
            _run("umount", mountpoint)


def _grow_pv(path: str | os.PathLike[str], offset: int, size: int) -> str:
    """The PV's metadata first (pe_count, the last LV's extents), then that LV's
    filesystem into its new extents."""
    with open_device(path, write=True) as device:
        plan = plan_resize(Region(device, offset, size), size)
        inner = probe(Region(device, offset + plan.lv_offset, plan.lv_size)).type
        if plan.new_lv_size != plan.lv_size:
            reason = can_grow(inner)
            if reason:
                raise UsageError(f"cannot grow {plan.lv}: {reason}; nothing was written")
        write_resized(device, offset, plan)
        device.sync()
    done = f"LVM physical volume grown to {size} bytes"
    if plan.new_lv_size != plan.lv_size:
        grown = grow_filesystem(path, offset + plan.lv_offset, plan.new_lv_size, inner)
        done += f", {plan.lv}: {grown}"
    return done


def _shrink_pv(path: str | os.PathLike[str], size: int) -> None:
    """The last LV's filesystem first (in a scratch file of its own, by its tool), then
    the PV's metadata; the file ends up ``size`` bytes long."""
    with open_device(path, write=True) as device:
        plan = plan_resize(device, size)
        if plan.new_lv_size < plan.lv_size:
            inner = probe(Region(device, plan.lv_offset, plan.lv_size)).type
            if not can_shrink(inner) or inner == "lvm2":
                raise UsageError(f"{plan.lv} holds {inner}, which cannot be shrunk")
            scratch = Path(f"{os.fspath(path)}.lv")
            try:
                with open_device(scratch, write=True, create_size=plan.lv_size) as lv:
                    _copy(device, plan.lv_offset, lv, 0, plan.lv_size)
                    lv.sync()
                shrink_filesystem(scratch, plan.new_lv_size, inner)
                with open_device(scratch) as lv:
                    _copy(lv, 0, device, plan.lv_offset, plan.new_lv_size)
            finally:
                scratch.unlink(missing_ok=True)
        write_resized(device, 0, plan)
        device.sync()
    os.truncate(path, size)


def _copy(source: Region | Device, at: int, target: Device, to: int, length: int) -> None:
    step = 4 << 20
    for pos in range(0, length, step):
        block = source.read_at(at + pos, min(step, length - pos))
        if block.count(0) != len(block):  # scratch files stay sparse
            target.write_at(to + pos, block)


def kept_size(fs: str) -> str | None:
    """Why a filesystem that may not shrink keeps its size, where the user can help."""
    if fs == "btrfs":
        return (
            "btrfs shrinks only while mounted, so its partition keeps its size (shrink it "
            "with 'btrfs filesystem resize' on the source, then back up again)"
        )
    return None


def can_shrink(fs: str) -> bool:
    """True for the filesystems shrunk here (ext2/3/4 with resize2fs, NTFS with ntfsresize,
    an LVM2 PV whose last logical volume holds one of them)."""
    return fs.startswith("ext") or fs in ("ntfs", "lvm2")


def shrink_filesystem(path: str | os.PathLike[str], size: int, fs: str) -> None:
    """Shrink the ``fs`` filesystem filling the file ``path`` (a scratch copy) to ``size``
    bytes; first asks the tool for its minimum and refuses, missing bytes given, below it."""
    if fs == "lvm2":
        _shrink_pv(path, size)
    elif fs.startswith("ext"):
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
