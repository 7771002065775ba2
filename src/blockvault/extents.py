"""Byte ranges: the vocabulary every layer speaks.

An ``Extent`` is one run ``[offset, offset + length)``. An ``ExtentMap`` is a
set of bytes written as sorted, non-overlapping, non-adjacent extents (adjacent
runs are merged), so two maps that cover the same bytes compare equal.
Filesystem allocation maps, boot areas and the regions a restore writes are all
``ExtentMap`` values.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["Extent", "ExtentMap"]


@dataclass(frozen=True, order=True, slots=True)
class Extent:
    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError(f"negative extent {self.offset}+{self.length}")

    @property
    def end(self) -> int:
        return self.offset + self.length


class ExtentMap:
    """An immutable set of byte ranges kept as merged, sorted extents."""

    __slots__ = ("_ends", "_starts", "_total")

    def __init__(self, extents: Iterable[Extent | tuple[int, int]] = ()) -> None:
        runs = sorted(
            (e.offset, e.end) if isinstance(e, Extent) else (e[0], e[0] + e[1]) for e in extents
        )
        starts: list[int] = []
        ends: list[int] = []
        for start, end in runs:
            if start < 0 or end < start:
                raise ValueError(f"bad extent [{start}, {end})")
            if end == start:
                continue
            if ends and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self._starts = starts
        self._ends = ends
        self._total: int | None = None

    @classmethod
    def _from_sorted(cls, starts: list[int], ends: list[int]) -> ExtentMap:
        new = cls.__new__(cls)
        new._starts = starts
        new._ends = ends
        new._total = None
        return new

    @classmethod
    def span(cls, offset: int, length: int) -> ExtentMap:
        return cls([(offset, length)])

    def __iter__(self) -> Iterator[Extent]:
        for start, end in zip(self._starts, self._ends, strict=True):
            yield Extent(start, end - start)

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtentMap):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __hash__(self) -> int:
        return hash((tuple(self._starts), tuple(self._ends)))

    def __repr__(self) -> str:
        runs = ", ".join(f"[{s}, {e})" for s, e in zip(self._starts, self._ends, strict=True))
        return f"ExtentMap({runs})"

    @property
    def total(self) -> int:
        """Number of bytes covered (counted once: a map never changes)."""
        if self._total is None:
            self._total = sum(self._ends) - sum(self._starts)
        return self._total

    @property
    def start(self) -> int:
        return self._starts[0] if self._starts else 0

    @property
    def end(self) -> int:
        return self._ends[-1] if self._ends else 0

    def union(self, other: ExtentMap) -> ExtentMap:
        return ExtentMap([*self, *other])

    __or__ = union

    def clip(self, offset: int, length: int) -> ExtentMap:
        """The part of this map inside ``[offset, offset + length)``."""
        lo, hi = offset, offset + length
        i = bisect.bisect_right(self._ends, lo)
        starts: list[int] = []
        ends: list[int] = []
        while i < len(self._starts) and self._starts[i] < hi:
            starts.append(max(self._starts[i], lo))
            ends.append(min(self._ends[i], hi))
            i += 1
        return ExtentMap._from_sorted(starts, ends)

    def intersect(self, other: ExtentMap) -> ExtentMap:
        pieces: list[Extent] = []
        for extent in other:
            pieces.extend(self.clip(extent.offset, extent.length))
        return ExtentMap(pieces)

    __and__ = intersect

    def subtract(self, other: ExtentMap) -> ExtentMap:
        """Bytes in this map and not in ``other``."""
        out: list[tuple[int, int]] = []
        for start, end in zip(self._starts, self._ends, strict=True):
            cursor = start
            for hole in other.clip(start, end - start):
                if hole.offset > cursor:
                    out.append((cursor, hole.offset - cursor))
                cursor = hole.end
            if cursor < end:
                out.append((cursor, end - cursor))
        return ExtentMap(out)

    __sub__ = subtract

    def shift(self, delta: int) -> ExtentMap:
        return ExtentMap._from_sorted(
            [s + delta for s in self._starts], [e + delta for e in self._ends]
        )

    def covers(self, offset: int, length: int) -> bool:
        """True when every byte of ``[offset, offset + length)`` is in the map."""
        return self.clip(offset, length).total == length

    def align_out(self, block: int) -> ExtentMap:
        """Widen every run to whole ``block``-sized units (used to round to sectors)."""
        return ExtentMap(
            (s // block * block, -(-e // block) * block - s // block * block)
            for s, e in zip(self._starts, self._ends, strict=True)
        )

    def to_pairs(self) -> list[tuple[int, int]]:
        return [(s, e - s) for s, e in zip(self._starts, self._ends, strict=True)]
