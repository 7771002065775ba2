"""A snapshot's index: for each region, its used map and its chunk ids.

Regions are the disk's boot areas (kind ``disk``) and each imaged partition. The
binary layout is in ``format.py`` and docs/FORMAT.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from blockvault.extents import Extent, ExtentMap
from blockvault.repo import format as fmt
from blockvault.repo.manifest import Snapshot

__all__ = ["ChunkRef", "Index", "Region"]


@dataclass(frozen=True)
class ChunkRef:
    """Chunk ``k`` of a region: where it lies and which object holds it."""

    number: int
    offset: int  # region-relative
    length: int
    chunk_id: str | None  # None for a hole (all zeros, no object)
    used: ExtentMap  # region-relative bytes of this chunk that are in use


@dataclass(frozen=True)
class Region:
    kind: int  # fmt.REGION_DISK or fmt.REGION_PARTITION
    number: int
    start: int  # byte offset on the source disk
    size: int
    used: ExtentMap  # region-relative
    chunk_ids: tuple[bytes, ...]  # raw 32-byte ids; fmt.HOLE for holes

    @property
    def name(self) -> str:
        if self.kind == fmt.REGION_FILES:
            return "files"
        return "boot areas" if self.kind == fmt.REGION_DISK else f"partition {self.number}"

    def chunks(self, chunk_size: int) -> Iterator[ChunkRef]:
        """The region's chunks where they lie; a files region has no layout (its
        objects are placed by trees, ``repo/tree.py``) and yields none."""
        if self.kind == fmt.REGION_FILES:
            return
        for k, raw in enumerate(self.chunk_ids):
            offset = k * chunk_size
            length = min(chunk_size, self.size - offset)
            yield ChunkRef(
                k,
                offset,
                length,
                None if raw == fmt.HOLE else raw.hex(),
                self.used.clip(offset, length),
            )


@dataclass(frozen=True)
class Index:
    chunk_size: int
    regions: tuple[Region, ...]

    def region(self, kind: int, number: int = 0) -> Region | None:
        return next((r for r in self.regions if r.kind == kind and r.number == number), None)

    def chunk_ids(self) -> set[str]:
        return {raw.hex() for r in self.regions for raw in r.chunk_ids if raw != fmt.HOLE}

    def disagreements(self, snapshot: Snapshot) -> list[str]:
        """How this index differs from what its manifest says it holds: the boot areas
        spanning the disk, then each imaged partition where the manifest puts it, in
        the manifest's chunk size. A reader trusts no region that fails this: restore
        writes each region at its ``start``, and must never write past the disk."""
        if snapshot.kind == "files":
            want = [(fmt.REGION_FILES, 0, 0, 0)]
        else:
            want = [(fmt.REGION_DISK, 0, 0, snapshot.disk_size)] + [
                (fmt.REGION_PARTITION, p.number, p.start, p.size)
                for p in snapshot.imaged_partitions
            ]
        have = [(r.kind, r.number, r.start, r.size) for r in self.regions]
        problems = []
        if have != want:
            problems.append(f"its regions {have} do not match the manifest's {want}")
        if self.chunk_size != snapshot.chunk_size:
            problems.append(
                f"chunk size {self.chunk_size} differs from the manifest's {snapshot.chunk_size}"
            )
        beyond = [
            p.number for p in snapshot.imaged_partitions if p.start + p.size > snapshot.disk_size
        ]
        if beyond:
            problems.append(f"partitions {beyond} end past the disk ({snapshot.disk_size} bytes)")
        return problems

    def to_bytes(self) -> bytes:
        parts = [
            fmt.INDEX_HEADER.pack(
                fmt.INDEX_MAGIC, fmt.VERSION, len(self.regions), self.chunk_size, 0
            )
        ]
        for r in self.regions:
            parts.append(
                fmt.INDEX_REGION.pack(
                    r.kind, r.number, 0, r.start, r.size, len(r.used), len(r.chunk_ids)
                )
            )
            parts.extend(fmt.INDEX_EXTENT.pack(e.offset, e.length) for e in r.used)
            parts.extend(r.chunk_ids)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Index:
        """Parse; raises ``ValueError`` saying what is wrong and where. Every count is
        checked against the bytes that remain before anything is built from it."""
        if len(data) < fmt.INDEX_HEADER.size:
            raise ValueError(f"truncated header: {len(data)} bytes")
        magic, version, count, chunk_size, _ = fmt.INDEX_HEADER.unpack_from(data)
        if magic != fmt.INDEX_MAGIC or version != fmt.VERSION:
            raise ValueError(f"bad header: magic {magic!r}, version {version}")
        if problem := fmt.chunk_size_problem(chunk_size):
            raise ValueError(f"bad header: {problem}")
        pos = fmt.INDEX_HEADER.size
        regions = []
        for n in range(1, count + 1):
            where = f"region {n} of {count}"
            pos = _need(data, pos, fmt.INDEX_REGION.size, f"{where}: header")
            kind, number, _, start, size, n_ext, n_chunks = fmt.INDEX_REGION.unpack_from(
                data, pos - fmt.INDEX_REGION.size
            )
            if kind not in (fmt.REGION_DISK, fmt.REGION_PARTITION, fmt.REGION_FILES):
                raise ValueError(f"{where}: unknown kind {kind}")
            if kind == fmt.REGION_FILES and (start or size or n_ext):
                raise ValueError(f"{where}: a files region has no start, size or used map")
            if kind != fmt.REGION_FILES and n_chunks != -(-size // chunk_size):
                raise ValueError(f"{where}: {n_chunks} chunks for {size} bytes")
            first = pos
            pos = _need(data, pos, n_ext * fmt.INDEX_EXTENT.size, f"{where}: {n_ext} extents")
            extents = [Extent(*e) for e in fmt.INDEX_EXTENT.iter_unpack(data[first:pos])]
            if any(e.length <= 0 for e in extents) or any(
                a.end > b.offset for a, b in pairwise(extents)
            ):
                raise ValueError(f"{where}: used map is not sorted and disjoint")
            first = pos
            pos = _need(data, pos, n_chunks * fmt.ID_BYTES, f"{where}: {n_chunks} chunk ids")
            ids = tuple(data[i : i + fmt.ID_BYTES] for i in range(first, pos, fmt.ID_BYTES))
            used = ExtentMap(extents)
            if used.end > size:
                raise ValueError(f"{where}: used map passes its end")
            regions.append(Region(kind, number, start, size, used, ids))
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes")
        return cls(chunk_size, tuple(regions))


def _need(data: bytes, pos: int, length: int, what: str) -> int:
    """``pos + length`` when ``data`` holds that many bytes from ``pos``."""
    if pos + length > len(data):
        raise ValueError(f"truncated: {what} need {length} bytes at {pos}, {len(data) - pos} left")
    return pos + length
