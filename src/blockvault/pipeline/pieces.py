"""Device-to-device copies in pieces: what clone and ``clone --into-free`` share.

A region is cut into ``PIECE``-sized pieces that hold a used byte; each piece is
read with only its used bytes (read_chunk) and written with write_used, several
at once since a disk-to-disk copy mostly waits on I/O. A piece may land elsewhere
on the target (``shift``): a partition copied into free space.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import blake3

from blockvault.disk.device import Device
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.extents import ExtentMap
from blockvault.pipeline.stages import is_zero, ordered_map, read_chunk, workers, write_used

__all__ = ["PIECE", "Piece", "copy_pieces", "cut", "verify_pieces"]

PIECE = 4 * 1024 * 1024  # bytes read and written at once (no chunks to cut here)
IO_THREADS = 8  # disk to disk mostly waits on I/O: more requests in flight (bench: 8 s vs 12 s)


@dataclass(frozen=True)
class Piece:
    base: int  # disk offset of the region
    offset: int  # region-relative start of this piece
    length: int
    used: ExtentMap  # region-relative, clipped to the piece
    keep_zeros: bool  # write even when all zero (table structures)
    gap: int  # used runs closer than this are written as one (inside a partition only)
    shift: int = 0  # target offset minus source offset (a partition copied elsewhere)

    def without(self, disk_bytes: ExtentMap) -> Piece:
        """This piece less ``disk_bytes`` (disk offsets): parts rewritten afterwards."""
        return replace(self, used=self.used - disk_bytes.shift(-self.base))

    def within(self, disk_bytes: ExtentMap) -> Piece:
        """This piece with only the used bytes in ``disk_bytes`` (disk offsets)."""
        mine = disk_bytes.clip(self.base + self.offset, self.length).shift(-self.base)
        return replace(self, used=self.used & mine)


def cut(
    start: int,
    size: int,
    used: ExtentMap,
    *,
    gap: int,
    keep: ExtentMap | None = None,
    shift: int = 0,
) -> Iterator[Piece]:
    """The pieces of the region at ``start`` that hold a used byte (``used`` is
    region-relative; ``keep``: disk bytes written even when zero)."""
    for offset in range(0, size, PIECE):
        length = min(PIECE, size - offset)
        clipped = used.clip(offset, length)
        if clipped:
            keep_zeros = keep is not None and bool(keep.clip(start + offset, length))
            yield Piece(start, offset, length, clipped, keep_zeros, gap, shift)


def copy_pieces(
    source: Device, target: Device, pieces: list[Piece], fresh: bool, reporter: Reporter
) -> int:
    """Copy every piece; returns the bytes written (a new file's zeros are skipped)."""

    def move(piece: Piece) -> tuple[int, int]:
        data = read_chunk(source, piece.base, piece.offset, piece.length, piece.used)
        if data is not None and fresh and not piece.keep_zeros and is_zero(data):
            return 0, piece.used.total  # a new file reads as zeros already
        base = piece.base + piece.shift
        n = write_used(target, base, piece.offset, data, piece.used, through_gaps=piece.gap)
        return n, piece.used.total

    reporter(TaskStarted("clone", sum(p.used.total for p in pieces), str(target.path)))
    written = 0
    # closing: an error or a signal in this loop stops the workers before the
    # target is closed (see stages.ordered_map)
    with contextlib.closing(ordered_map(move, pieces, workers(IO_THREADS))) as results:
        for n, done in results:
            written += n
            reporter(TaskAdvanced("clone", done))
    reporter(TaskFinished("clone"))
    return written


def verify_pieces(source: Device, target: Device, pieces: list[Piece], reporter: Reporter) -> bool:
    """Re-read the used bytes of both sides and compare their hashes."""

    def same(piece: Piece) -> bool:
        a = read_chunk(source, piece.base, piece.offset, piece.length, piece.used)
        b = read_chunk(target, piece.base + piece.shift, piece.offset, piece.length, piece.used)
        return blake3.blake3(a or b"").digest() == blake3.blake3(b or b"").digest()

    reporter(TaskStarted("verify", len(pieces), str(target.path)))
    equal = True
    with contextlib.closing(ordered_map(same, pieces, workers(IO_THREADS))) as results:
        for ok in results:
            equal = equal and ok
            reporter(TaskAdvanced("verify", 1))
    reporter(TaskFinished("verify"))
    return equal
