"""VM disks: a snapshot served as an NBD export, which ``qemu-img`` and QEMU read.

The export is the snapshot's whole disk as ``SnapshotImage`` reads it, with its holes
named from the index alone: chunks stored as holes, and bytes no region uses (unused
filesystem blocks, partitions not imaged). Those read as zeros, so a client that asks
for block status (``qemu-img convert``, ``nbdcopy``) never reads them.
"""

from __future__ import annotations

from collections.abc import Iterator

from blockvault.extents import ExtentMap
from blockvault.nbd.server import Export
from blockvault.repo import format as fmt
from blockvault.repo.image import SnapshotImage
from blockvault.repo.index import Index, Region
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = ["SnapshotExport", "data_map", "snapshot_export"]


def data_map(index: Index, disk_size: int) -> ExtentMap:
    """Bytes of the disk that hold stored data: each region's used bytes, less its hole
    chunks, the boot areas only outside the imaged partitions."""
    partitions = ExtentMap(
        (r.start, r.size) for r in index.regions if r.kind == fmt.REGION_PARTITION
    )
    data = ExtentMap()
    for region in index.regions:
        stored = _stored(region, index.chunk_size).shift(region.start)
        if region.kind == fmt.REGION_DISK:
            stored = stored - partitions
        data = data | stored
    return data.clip(0, disk_size)


def _stored(region: Region, chunk_size: int) -> ExtentMap:
    holes = ExtentMap(
        (k * chunk_size, chunk_size) for k, raw in enumerate(region.chunk_ids) if raw == fmt.HOLE
    )
    return region.used.clip(0, region.size) - holes


class SnapshotExport:
    """A snapshot's disk for ``nbd.server.serving``; safe for several reader threads
    (the region readers lock their caches; the repository's reads are thread-safe)."""

    def __init__(self, image: SnapshotImage, data: ExtentMap) -> None:
        self.image = image
        self.size = image.size
        self.data = data

    def read_at(self, offset: int, length: int) -> bytes:
        return self.image.read_at(offset, length)

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        cursor, end = offset, offset + length
        for run in self.data.clip(offset, length):
            if run.offset > cursor:
                yield cursor, run.offset - cursor, True
            yield run.offset, run.length, False
            cursor = run.end
        if cursor < end:
            yield cursor, end - cursor, True


def snapshot_export(repo: Repository, snapshot: Snapshot) -> Export:
    """The whole disk of ``snapshot`` as an NBD export, holes from its index."""
    index = repo.load_index(snapshot)
    return SnapshotExport(SnapshotImage(repo, snapshot, index), data_map(index, snapshot.disk_size))
