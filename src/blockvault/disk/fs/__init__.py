"""Filesystem allocation maps: which bytes of a partition hold data.

Glossary:
  allocation map   the ``ExtentMap`` of partition-relative byte ranges a filesystem
                   uses: its metadata (superblocks, tables, journal) and its data.
                   Everything else may be skipped by a backup and left alone by a restore.
  probe            look at a partition's first bytes and name its filesystem.
  raw              content we cannot read (unknown, encrypted): the whole partition
                   counts as used; all-zero chunks still become holes.

Each filesystem module (``ext``, ``fat``, ``ntfs``, ``swap``) has ``detect(reader) -> bool``
and ``read(reader) -> FilesystemInfo``, reading only through ``reader.read_at`` with
partition-relative offsets. ``probe`` picks the module.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockvault.disk.volumes import Volume
from blockvault.extents import ExtentMap

__all__ = ["FilesystemInfo"]


@dataclass(frozen=True)
class FilesystemInfo:
    """What a filesystem module learned about one partition."""

    type: str  # "ext2" | "ext3" | "ext4" | "fat12" | "fat16" | "fat32" | "ntfs" | "swap" | "raw"
    size: int  # bytes the filesystem spans (may be less than the partition)
    block_size: int  # allocation unit in bytes (cluster, block, page)
    used: ExtentMap  # partition-relative byte ranges in use, metadata included
    label: str | None = None
    uuid: str | None = None
    note: str | None = None  # e.g. why a partition is imaged raw
    # the layers below the partition (LUKS, LVM PV and LVs), parents first; () for a
    # plain filesystem. ``used`` already holds their metadata and mapped-out content.
    volumes: tuple[Volume, ...] = ()

    @property
    def used_bytes(self) -> int:
        return self.used.total
