"""Minimal snapshots for repository tests that need manifests but no disk."""

from __future__ import annotations

from collections.abc import Sequence

from blockvault.extents import ExtentMap
from blockvault.repo import Index, Region, Repository, Snapshot
from blockvault.repo import format as fmt


def commit_chunks(repo: Repository, chunks: Sequence[bytes], when: str) -> Snapshot:
    """Store ``chunks`` and commit a snapshot whose boot-area region is exactly them,
    one chunk each, at time ``when``."""
    for data in chunks:
        repo.put_chunk(data)
    return repo.write_snapshot(*records(repo, chunks, when))


def records(repo: Repository, chunks: Sequence[bytes], when: str) -> tuple[Snapshot, Index]:
    """The manifest and index of a snapshot whose boot-area region is exactly ``chunks``."""
    ids = tuple(repo.chunk_id(c) for c in chunks)
    size = repo.config.chunk_size * len(chunks)
    region = Region(fmt.REGION_DISK, 0, 0, size, ExtentMap.span(0, size), ids)
    snap = Snapshot(
        time=when,
        host="h",
        source="/dev/x",
        disk_size=size,
        sector_size=512,
        table="none",
        disk_id="",
        partitions=(),
        index="",
        chunk_size=repo.config.chunk_size,
        compression="zstd:3",
    )
    return snap, Index(repo.config.chunk_size, (region,))
