"""Filesystems inside snapshots: ls, cat, extract and find without root, and FUSE mounts.

Glossary:

address
    ``SNAPSHOT[:PART][/PATH]``: a snapshot (id, unique prefix or ``latest``), a
    partition number (the only partition of a disk without a table by default) and
    a path inside that partition's filesystem.
volume
    One imaged partition opened as a filesystem (:class:`Volume`): its region is read
    through a small chunk cache, so only the chunks holding the metadata and files
    asked for are fetched from the repository.
filesystem
    The one interface (:class:`Filesystem`) over the parsers for ext2/3/4, FAT and
    NTFS (the dissect libraries); everything above it sees the same entries.
mount
    A FUSE tree with ``disk.img`` and ``pN.img`` (random-access, read-only), plus,
    with ``filesystems``, each partition's files under ``pN/``; a state file lists
    the loop devices and inner mounts so ``unmount`` cleans up after a crash.
"""

from __future__ import annotations

from blockvault.browse.extract import ExtractResult, extract
from blockvault.browse.filesystem import Entry, Filesystem
from blockvault.browse.find import Match, find
from blockvault.browse.volume import (
    Address,
    Volume,
    default_partition,
    open_filesystem,
    open_volume,
    parse_address,
)

__all__ = [
    "Address",
    "Entry",
    "ExtractResult",
    "Filesystem",
    "Match",
    "Volume",
    "default_partition",
    "extract",
    "find",
    "open_filesystem",
    "open_volume",
    "parse_address",
]
