"""The parent snapshot's chunks, found by where they lie.

An incremental backup asks two things of the snapshot it is made after: which chunk
held these bytes last time (to reuse it without reading, when the filesystem proves
the bytes unchanged), and which chunk a new one may be stored as a delta against.
Both are positional: chunk ``k`` of a region that lies where the parent's region lay,
in the same chunk size. Nothing here is trusted for content: a reused id is still
checked to be stored at commit, and sampling re-reads what was reused.
"""

from __future__ import annotations

from blockvault.errors import BlockvaultError
from blockvault.extents import ExtentMap
from blockvault.repo import Index, Region, Repository, Snapshot
from blockvault.repo import format as fmt

__all__ = ["NO_PARENT", "ParentChunks"]

RegionKey = tuple[int, int, int, int]  # kind, number, start, size


def _key(region: Region) -> RegionKey:
    return (region.kind, region.number, region.start, region.size)


class ParentChunks:
    """Chunk ids and used maps of a parent snapshot's disk regions, by position."""

    def __init__(self, index: Index | None, snapshot: Snapshot | None = None) -> None:
        self.snapshot = snapshot
        self.chunk_size = index.chunk_size if index is not None else 0
        self._regions: dict[RegionKey, Region] = (
            {_key(r): r for r in index.regions if r.kind != fmt.REGION_FILES} if index else {}
        )

    @classmethod
    def load(cls, repo: Repository, parent: Snapshot | None) -> ParentChunks:
        """The parent's index; no parent when there is none, it is a file snapshot, or
        its index cannot be read (a damaged parent makes the backup a full one, it
        never stops it: ``check`` reports the damage)."""
        if parent is None or parent.kind != "disk":
            return NO_PARENT
        try:
            return cls(repo.load_index(parent), parent)
        except BlockvaultError:
            return NO_PARENT

    def __bool__(self) -> bool:
        return bool(self._regions)

    def region(self, region: Region, chunk_size: int) -> Region | None:
        """The parent's region at the same place as ``region``, in the same chunk size."""
        if chunk_size != self.chunk_size:
            return None
        return self._regions.get(_key(region))

    def chunk(self, region: Region, chunk_size: int, number: int) -> tuple[bytes, ExtentMap] | None:
        """The parent's raw chunk id (``fmt.HOLE`` for a hole) and used map of chunk
        ``number`` of ``region``, or None where the parent has no such chunk."""
        mine = self.region(region, chunk_size)
        if mine is None or not 0 <= number < len(mine.chunk_ids):
            return None
        offset = number * chunk_size
        return mine.chunk_ids[number], mine.used.clip(offset, min(chunk_size, mine.size - offset))


NO_PARENT = ParentChunks(None)
