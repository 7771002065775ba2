"""The repository: where snapshots of disks are kept.

Glossary:
  chunk     a fixed-size piece of a region (default 256 KiB), aligned to the region's
            start; bytes outside the used map are zero. Stored once per content.
  hole      a chunk that is all zeros or wholly unused: no object is stored.
  region    the boot areas of a disk, or one partition; each has a used map.
  index     for one snapshot, every region's used map and chunk ids.
  snapshot  a manifest naming the source, its layout and its index. Writing it
            commits a backup.
"""

from __future__ import annotations

from blockvault.repo.index import ChunkRef, Index, Region
from blockvault.repo.manifest import PartitionRecord, Snapshot, Stats, VolumeRecord
from blockvault.repo.repository import Repository, RepositoryConfig, Selector, parse_compression

__all__ = [
    "ChunkRef",
    "Index",
    "PartitionRecord",
    "Region",
    "Repository",
    "RepositoryConfig",
    "Selector",
    "Snapshot",
    "Stats",
    "VolumeRecord",
    "parse_compression",
]
