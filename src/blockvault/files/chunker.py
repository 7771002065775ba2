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
from collections.abc import Callable, Iterator
from typing import Final

from pyfastcdc import FastCDC

__all__ = ["AVERAGE", "MAXIMUM", "MINIMUM", "cut", "cut_stream"]

MINIMUM: Final = 512 << 10
AVERAGE: Final = 1 << 20  # FastCDC's parameter; the mean chunk is about 1.3 MiB
MAXIMUM: Final = 8 << 20
WINDOW: Final = MAXIMUM  # bytes read at once; with the carried tail, at most 2 * MAXIMUM held


def _chunker() -> FastCDC:
    return FastCDC(AVERAGE, min_size=MINIMUM, max_size=MAXIMUM, normalized_chunking=1, seed=0)


def cut(fd: int, start: int, length: int) -> Iterator[memoryview]:
    """The chunks of ``length`` bytes of ``fd`` from ``start``, in order, read with
    ``pread``. Stops early, short, if the file shrinks meanwhile."""
    done = 0

    def read(n: int) -> bytes:
        nonlocal done
        data = os.pread(fd, min(n, length - done), start + done) if done < length else b""
        done += len(data)
        return data

    return cut_stream(read)


def cut_stream(read: Callable[[int], bytes]) -> Iterator[memoryview]:
    """The chunks of what ``read(n)`` returns until it returns ``b""`` (a pipe may
    return less than asked), read about ``WINDOW`` bytes at a time (memory: one
    window). Each view is valid until the next is taken."""
    chunker = _chunker()
    carry = b""
    while True:
        data = _fill(read, WINDOW)
        last = len(data) < WINDOW  # the end of the stream
        buf = carry + data if carry else data
        pieces = list(chunker.cut_buf(buf))
        if not last and pieces:
            carry = bytes(pieces[-1].data)  # may continue in the next window
            pieces.pop()
        for piece in pieces:
            yield piece.data
        if last:
            return


def _fill(read: Callable[[int], bytes], size: int) -> bytes:
    parts = []
    got = 0
    while got < size:
        part = read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
