"""Name the filesystem on a partition and read its allocation map.

The modules are tried in a fixed order, each ``detect`` looking only at its
own signature: ext (magic at byte 1024+56), NTFS (OEM id "NTFS    "), FAT (a
sane BPB that is not NTFS or exFAT), swap (magic at the end of the first page),
XFS (``XFSB`` at byte 0), btrfs (magic in the superblock at 64 KiB).
A signature that matches but leads to inconsistent structures raises
``FilesystemError`` rather than falling back to raw here: the caller decides (the
layout images such a partition raw and warns with the reason, never silently).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo, btrfs, ext, fat, md, ntfs, swap, xfs
from blockvault.disk.volumes import luks, lvm
from blockvault.extents import ExtentMap

__all__ = ["RAW_BLOCK_SIZE", "known", "probe", "raw"]

RAW_BLOCK_SIZE = 512

_MODULES: tuple[tuple[Callable[[Reader], bool], Callable[[Reader], FilesystemInfo]], ...] = (
    # first: a RAID1 member with metadata 1.0 or 0.90 (superblock at the end) starts
    # with the array's filesystem, which must not hide the member and its superblock
    (md.detect, md.read),
    (ext.detect, ext.read),
    (ntfs.detect, ntfs.read),
    (fat.detect, fat.read),
    (swap.detect, swap.read),
    (xfs.detect, xfs.read),
    (btrfs.detect, btrfs.read),
)
# Volume layers (disk/volumes) come after the filesystems: their content is probed
# again through their mapping, so a LUKS container holding a PV is read to the end.
_LAYERS: tuple[Callable[[Reader], bool], ...] = (luks.detect, lvm.detect)


def raw(reader: Reader, note: str = "unknown content, imaged raw") -> FilesystemInfo:
    """Every byte of the partition counts as used."""
    return FilesystemInfo(
        type="raw",
        size=reader.size,
        block_size=RAW_BLOCK_SIZE,
        used=ExtentMap.span(0, reader.size),
        note=note,
    )


def probe(reader: Reader, key: luks.KeySource = None, where: str = "volume") -> FilesystemInfo:
    """The allocation map of whatever filesystem or volume stack ``reader`` holds, or
    raw. ``key`` opens LUKS containers (at any depth); ``where`` names the partition
    in a ``LuksKeyRejected`` error."""
    for detect, read in _MODULES:
        if detect(reader):
            return read(reader)
    inner = functools.partial(probe, key=key, where=where)
    if luks.detect(reader):
        return luks.read(reader, key, inner, where)
    if lvm.detect(reader):
        return lvm.read(reader, inner)
    return raw(reader)


def known(reader: Reader) -> bool:
    """True when ``reader`` starts with a filesystem signature we can read (cheap)."""
    return any(detect(reader) for detect, _ in _MODULES) or any(d(reader) for d in _LAYERS)
