"""The overlay a whole-disk live backup reads through (disk/live.py): ranges of a disk
taken from another device (a logical volume's snapshot) or from memory (LVM metadata
copied before the snapshots were made), the rest from the disk itself."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from blockvault.disk.device import open_device
from blockvault.disk.live import _Overlay, _Piece

SIZE = 64 * 1024


@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(st.integers(0, SIZE), min_size=6, max_size=6, unique=True),
    inner=st.integers(0, SIZE // 2),
    reads=st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 9000)), max_size=20),
)
def test_overlay_reads_each_range_from_its_source(
    cuts: list[int], inner: int, reads: list[tuple[int, int]]
) -> None:
    a, b, c, d, e, f = sorted(cuts)
    disk_bytes, snap_bytes, memory = os.urandom(SIZE), os.urandom(SIZE * 2), os.urandom(f - e)
    expected = bytearray(disk_bytes)
    expected[a:b] = snap_bytes[inner : inner + b - a]  # a volume's extents, from its snapshot
    expected[c:d] = snap_bytes[SIZE : SIZE + d - c]  # another run of it, further in
    expected[e:f] = memory  # metadata as it was
    with tempfile.TemporaryDirectory() as tmp:
        disk, snap = Path(tmp) / "disk", Path(tmp) / "snap"
        disk.write_bytes(disk_bytes)
        snap.write_bytes(snap_bytes)
        with open_device(str(disk)) as base, open_device(str(snap)) as other:
            pieces = [
                _Piece(e, f - e, None, 0, memory),
                _Piece(c, d - c, other, SIZE, b""),
                _Piece(a, b - a, other, inner, b""),
            ]
            overlay = _Overlay(base, pieces)
            assert overlay.size == SIZE and overlay.path == base.path
            assert overlay.read_at(0, SIZE) == bytes(expected)
            for offset, length in reads:
                length = min(length, SIZE - offset)
                assert overlay.read_at(offset, length) == expected[offset : offset + length]
