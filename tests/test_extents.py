"""ExtentMap arithmetic against a plain set-of-bytes model."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from blockvault.extents import Extent, ExtentMap

runs = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=12)


def as_set(pairs: list[tuple[int, int]]) -> set[int]:
    return {b for o, n in pairs for b in range(o, o + n)}


def bytes_of(m: ExtentMap) -> set[int]:
    return {b for e in m for b in range(e.offset, e.end)}


@given(runs)
def test_normalised(pairs: list[tuple[int, int]]) -> None:
    m = ExtentMap(pairs)
    assert bytes_of(m) == as_set(pairs)
    extents = list(m)
    for a, b in itertools.pairwise(extents):
        assert a.end < b.offset  # sorted, disjoint, not adjacent
    assert m.total == len(as_set(pairs))


@given(runs, runs)
def test_set_operations(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    ma, mb = ExtentMap(a), ExtentMap(b)
    assert bytes_of(ma | mb) == as_set(a) | as_set(b)
    assert bytes_of(ma & mb) == as_set(a) & as_set(b)
    assert bytes_of(ma - mb) == as_set(a) - as_set(b)


@given(runs, st.integers(0, 250), st.integers(0, 100))
def test_clip_and_covers(pairs: list[tuple[int, int]], offset: int, length: int) -> None:
    m = ExtentMap(pairs)
    window = set(range(offset, offset + length))
    assert bytes_of(m.clip(offset, length)) == as_set(pairs) & window
    assert m.covers(offset, length) == window.issubset(as_set(pairs))


def test_align_out_and_shift() -> None:
    m = ExtentMap([(5, 3), (700, 10)])
    assert m.align_out(512) == ExtentMap([(0, 512), (512, 512)])
    assert m.shift(10) == ExtentMap([Extent(15, 3), Extent(710, 10)])
