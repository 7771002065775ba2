"""Run finding in bitmaps and FAT tables, against bit-by-bit references, and its speed."""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockvault.disk.fs.bitmap import entry_runs, set_runs

BAD = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}


def runs_of(flags: list[bool], base: int = 0) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i, on in enumerate(flags):
        if on:
            if runs and sum(runs[-1]) == base + i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((base + i, 1))
    return runs


def reference_set_runs(bitmap: bytes, nbits: int) -> list[tuple[int, int]]:
    return runs_of([bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(nbits)])


def pack(values: list[int], bits: int) -> bytes:
    """A FAT as the specification lays it out (FAT12: two entries in three bytes)."""
    if bits == 16:
        return struct.pack(f"<{len(values)}H", *values)
    if bits == 32:
        return struct.pack(f"<{len(values)}I", *values)
    out = bytearray((len(values) * 3 + 1) // 2)
    for n, v in enumerate(values):
        at = n * 3 // 2
        word = int.from_bytes(out[at : at + 2].ljust(2, b"\0"), "little")
        word |= v << 4 if n % 2 else v
        out[at : at + 2] = word.to_bytes(2, "little")[: len(out) - at]
    return bytes(out)


# Bytes biased towards the 0x00 and 0xFF stretches real bitmaps are made of.
bitmap_bytes = st.lists(
    st.one_of(st.sampled_from([0, 0xFF]), st.integers(0, 255)), max_size=64
).map(bytes)


@given(bitmap_bytes, st.integers(0, 8))
def test_set_runs_matches_bit_by_bit(bitmap: bytes, cut: int) -> None:
    nbits = max(0, len(bitmap) * 8 - cut)
    assert set_runs(bitmap, nbits) == reference_set_runs(bitmap, nbits)


def test_set_runs_ignores_padding_past_nbits() -> None:
    assert set_runs(b"\xff\xff", 12) == [(0, 12)]
    assert set_runs(b"\x01\x80", 9) == [(0, 1)]  # bit 15 is padding
    assert set_runs(b"\x00\xf0", 12) == []
    assert set_runs(b"", 0) == []


@st.composite
def fat_tables(draw: st.DrawFn) -> tuple[int, list[int]]:
    bits = draw(st.sampled_from([12, 16, 32]))
    top = (1 << bits) - 1
    special = [0, 0, 1, BAD[bits], top, top - 8, 0xF000_0000 if bits == 32 else 0]
    value = st.one_of(st.sampled_from(special), st.integers(0, top))
    return bits, draw(st.lists(value, min_size=1, max_size=80))


@given(fat_tables(), st.integers(0, 5), st.booleans())
def test_entry_runs_matches_entry_by_entry(
    table: tuple[int, list[int]], first: int, skip: bool
) -> None:
    bits, values = table
    first = min(first, len(values) - 1)
    # Only the low 28 bits of a FAT32 entry are the cluster number.
    masked = [v & 0x0FFF_FFFF for v in values] if bits == 32 else values
    expected = runs_of(
        [v != 0 and not (skip and v == BAD[bits]) for v in masked[first:]], base=first
    )
    got = entry_runs(pack(values, bits), bits, first, len(values) - first, skip_bad=skip)
    assert got == expected


def test_entry_runs_refuses_a_short_table() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        entry_runs(b"\0" * 5, 16, 2, 2, skip_bad=True)


def best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def realistic_bitmap(size: int, seed: int) -> bytes:
    """Long used and free stretches with ragged edges, as a filled disk has."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b"\xff" * rnd.randrange(0, 4096) + bytes([rnd.randrange(256)])
        out += b"\0" * rnd.randrange(0, 8192) + bytes([rnd.randrange(256)])
    return bytes(out[:size])


def test_set_runs_speed() -> None:
    small = realistic_bitmap(128 * 1024, 1)  # one 4 GiB ext4 flex group, or NTFS on 4 GiB
    assert best_of(3, lambda: set_runs(small, len(small) * 8)) < 0.2
    large = small * 256  # 32 MiB: the bitmap of a 1 TiB ext4 with 4 KiB blocks
    assert best_of(1, lambda: set_runs(large, len(large) * 8)) < 10.0


def test_entry_runs_speed() -> None:
    rnd = random.Random(2)
    values = [rnd.choice([0, 0, 5, 0x0FFF_FFFF]) for _ in range(1 << 20)]
    table = pack(values, 32)  # a million clusters: 32 GiB of FAT32 at 32 KiB
    assert best_of(3, lambda: entry_runs(table, 32, 2, (1 << 20) - 2, skip_bad=True)) < 2.0
