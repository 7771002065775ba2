"""Content-defined chunking of file data: where a file's bytes are cut into chunks.

The cut points decide deduplication forever (a changed parameter gives every file
new chunks), so they are frozen here and in docs/FORMAT.md, "File snapshots":
FastCDC 2020 (pyfastcdc, normalized chunking 1, gear seed 0) with a 512 KiB minimum,
a 1 MiB average parameter and an 8 MiB maximum. A cut depends only on the bytes
since the previous cut, so a file can be cut in bounded pieces (``cut``) and an
insertion moves only the cuts near it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

from pyfastcdc import FastCDC

__all__ = ["AVERAGE", "MAXIMUM", "MINIMUM", "cut"]

MINIMUM: Final = 512 << 10
AVERAGE: Final = 1 << 20  # FastCDC's parameter; the mean chunk is about 1.3 MiB
MAXIMUM: Final = 8 << 20
WINDOW: Final = 4 * MAXIMUM  # bytes read at once: at least one maximal chunk


def _chunker() -> FastCDC:
    return FastCDC(AVERAGE, min_size=MINIMUM, max_size=MAXIMUM, normalized_chunking=1, seed=0)


def cut(fd: int, start: int, length: int) -> Iterator[memoryview]:
    """The chunks of ``length`` bytes of ``fd`` from ``start``, in order, read with
    ``pread`` about ``WINDOW`` bytes at a time (memory: one window). Each view is valid
    until the next is taken. Stops early, short, if the file shrinks meanwhile."""
    chunker = _chunker()
    carry = b""
    done = 0
    while True:
        want = min(WINDOW, length - done)
        data = os.pread(fd, want, start + done) if want else b""
        done += len(data)
        last = len(data) < WINDOW or done >= length  # the end of the range (or of the file)
        buf = carry + data if carry else data
        pieces = list(chunker.cut_buf(buf))
        if not last and pieces:
            carry = bytes(pieces[-1].data)  # may continue in the next window
            pieces.pop()
        for piece in pieces:
            yield piece.data
        if last:
            return
