"""Name the filesystem on a partition and read its allocation map.

The modules are tried in a fixed order, each ``detect`` looking only at its
own signature: ext (magic at byte 1024+56), NTFS (OEM id "NTFS    "), FAT (a
sane BPB that is not NTFS or exFAT), swap (magic at the end of the first page),
btrfs (magic in the superblock at 64 KiB).
A signature that matches but leads to inconsistent structures raises
``FilesystemError`` rather than falling back to raw here: the caller decides (the
layout images such a partition raw and warns with the reason, never silently).
"""

from __future__ import annotations

from collections.abc import Callable

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo, btrfs, ext, fat, ntfs, swap
from blockvault.extents import ExtentMap

__all__ = ["RAW_BLOCK_SIZE", "known", "probe", "raw"]

RAW_BLOCK_SIZE = 512

_MODULES: tuple[tuple[Callable[[Reader], bool], Callable[[Reader], FilesystemInfo]], ...] = (
    (ext.detect, ext.read),
    (ntfs.detect, ntfs.read),
    (fat.detect, fat.read),
    (swap.detect, swap.read),
    (btrfs.detect, btrfs.read),
)


def raw(reader: Reader, note: str = "unknown content, imaged raw") -> FilesystemInfo:
    """Every byte of the partition counts as used."""
    return FilesystemInfo(
        type="raw",
        size=reader.size,
        block_size=RAW_BLOCK_SIZE,
        used=ExtentMap.span(0, reader.size),
        note=note,
    )


def probe(reader: Reader) -> FilesystemInfo:
    """The allocation map of whatever filesystem ``reader`` holds, or raw."""
    for detect, read in _MODULES:
        if detect(reader):
            return read(reader)
    return raw(reader)


def known(reader: Reader) -> bool:
    """True when ``reader`` starts with a filesystem signature we can read (cheap)."""
    return any(detect(reader) for detect, _ in _MODULES)
