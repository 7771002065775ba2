"""A snapshot read as a disk: random-access reads that fetch only needed chunks.

Restore reads the partition table back through it; mount and browse read
filesystems through it. Bytes of partitions not imaged and unused bytes read as
zeros.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from blockvault.repo import format as fmt
from blockvault.repo.index import Index, Region
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = ["RegionReader", "SnapshotImage"]


class RegionReader:
    """One region of a snapshot, read by region-relative offset."""

    def __init__(self, repo: Repository, region: Region, chunk_size: int, cache: int = 8) -> None:
        self.repo = repo
        self.region = region
        self.chunk_size = chunk_size
        self.size = region.size
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_len = cache
        self._lock = threading.Lock()
        self.fetched = 0  # chunks fetched from the repository, for tests and statistics

    def _chunk(self, k: int) -> bytes | None:
        raw = self.region.chunk_ids[k]
        if raw == fmt.HOLE:
            return None
        with self._lock:
            if k in self._cache:
                self._cache.move_to_end(k)
                return self._cache[k]
        data = self.repo.get_chunk(raw.hex())
        with self._lock:
            self.fetched += 1
            self._cache[k] = data
            while len(self._cache) > self._cache_len:
                self._cache.popitem(last=False)
        return data

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"read [{offset}, {offset + length}) outside {self.region.name}")
        out = bytearray()
        pos = offset
        while pos < offset + length:
            k, inner = divmod(pos, self.chunk_size)
            n = min(self.chunk_size - inner, offset + length - pos)
            data = self._chunk(k)
            out += data[inner : inner + n] if data is not None else bytes(n)
            pos += n
        return bytes(out)


class SnapshotImage:
    """The whole disk of a snapshot: partitions from their regions, the rest from boot areas.

    ``parts`` lets a caller share partition readers (and their caches) it already has,
    keyed by partition number; the others are made here with ``cache`` chunks each.
    """

    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        index: Index,
        parts: dict[int, RegionReader] | None = None,
        cache: int = 8,
    ) -> None:
        snapshot.require_disk("reading it as a disk")
        self.size = snapshot.disk_size
        given = parts or {}
        self._regions = [
            given[r.number]
            if r.kind == fmt.REGION_PARTITION and r.number in given
            else RegionReader(repo, r, index.chunk_size, cache)
            for r in index.regions
        ]
        self._disk = next(r for r in self._regions if r.region.kind == fmt.REGION_DISK)
        self._parts = [r for r in self._regions if r.region.kind == fmt.REGION_PARTITION]

    def read_at(self, offset: int, length: int) -> bytes:
        out = bytearray()
        pos, end = offset, min(offset + length, self.size)
        while pos < end:
            part = next(
                (r for r in self._parts if r.region.start <= pos < r.region.start + r.size), None
            )
            if part is not None:
                n = min(end, part.region.start + part.size) - pos
                out += part.read_at(pos - part.region.start, n)
            else:
                nxt = min(
                    (r.region.start for r in self._parts if r.region.start > pos), default=end
                )
                n = min(end, nxt) - pos
                out += self._disk.read_at(pos, n)
            pos += n
        return bytes(out)
