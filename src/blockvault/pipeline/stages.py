"""The few stages every byte-moving pipeline is built from.

read_chunk   -> the plaintext of one chunk of a region: used bytes from the source,
                zeros elsewhere (None when the chunk has no used byte)
ordered_map  -> run a stage on a thread pool, a bounded number ahead, results in order
write_used   -> put the used parts of a chunk onto a target

zstd, BLAKE3 and positional I/O release the GIL, so a thread pool uses every core.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from blockvault.disk.device import Device, SourceDisk
from blockvault.extents import ExtentMap

__all__ = ["ZEROS", "is_zero", "ordered_map", "read_chunk", "workers", "write_used", "zero_fill"]

T = TypeVar("T")
R = TypeVar("R")

ZEROS = bytes(64 * 1024 * 1024)
READ_THROUGH_GAP = 256 * 1024  # read across unused gaps smaller than this: one big read wins


MAX_IO_THREADS = 8  # each thread may hold two chunks in flight: bounds memory


def workers(parallel_io: int = 0) -> int:
    """Threads for a pipeline: every core busy, and more when storage is remote
    (``parallel_io`` from the backend's capabilities), since then threads mostly wait."""
    return max(2, (os.cpu_count() or 2) + 1, min(parallel_io, MAX_IO_THREADS))


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    # startswith compares in place; slicing ZEROS would copy the whole length first
    if len(data) <= len(ZEROS):
        return ZEROS.startswith(data)
    return bytes(data).count(0) == len(data)


def read_chunk(
    device: SourceDisk, base: int, offset: int, length: int, used: ExtentMap
) -> bytearray | None:
    """Bytes ``[offset, offset + length)`` of the region at disk offset ``base``.

    ``used`` is region-relative and already clipped to the chunk. Only used bytes
    are read; the rest of the buffer is zero.
    """
    if not used:
        return None
    buf = bytearray(length)
    view = memoryview(buf)
    runs = _coalesce(used, READ_THROUGH_GAP)
    for start, end in runs:
        device.readinto_at(view[start - offset : end - offset], base + start)
    # zero whatever was read through but is not in use
    for gap in ExtentMap((s, e - s) for s, e in runs) - used:
        view[gap.offset - offset : gap.end - offset] = ZEROS[: gap.length]
    return buf


def _coalesce(used: ExtentMap, gap: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for extent in used:
        if runs and extent.offset - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], extent.end)
        else:
            runs.append((extent.offset, extent.end))
    return runs


def write_used(
    device: Device,
    target_base: int,
    offset: int,
    data: bytes | bytearray | None,
    used: ExtentMap,
    *,
    through_gaps: int = 0,
) -> int:
    """Write the ``used`` parts of a chunk (``data`` None = zeros); returns bytes written.

    ``through_gaps``: used parts closer than this are written as one run, gap included
    (fewer, larger writes; only where the gap's target bytes are free to overwrite,
    such as unused blocks inside the partition being written)."""
    view = memoryview(data) if data is not None else None
    written = 0
    for start, end in _coalesce(used, through_gaps):
        piece = view[start - offset : end - offset] if view is not None else ZEROS[: end - start]
        device.write_at(target_base + start, piece)
        written += end - start
    return written


def zero_fill(device: Device, target_base: int, extents: ExtentMap, step: int = 4 << 20) -> None:
    """Write zeros over ``extents`` (for --zero-unused)."""
    for extent in extents:
        for pos in range(extent.offset, extent.end, step):
            n = min(step, extent.end - pos)
            device.write_at(target_base + pos, ZEROS[:n])


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], threads: int | None = None
) -> Generator[R]:
    """``map(fn, items)`` on a thread pool, at most ``2 * threads`` items in flight.

    A consumer that may stop early (an error, an interruption) wraps it in
    ``contextlib.closing``: closing cancels what has not started and waits for what
    has, so no worker still writes once the consumer cleans up. (CPython happens to
    finalize a generator that only the ``for`` statement holds as the exception
    unwinds it, but one held by a name lives as long as the traceback: its workers
    keep writing while the caller closes the target and reports.)"""
    threads = threads or workers()
    with ThreadPoolExecutor(threads, thread_name_prefix="blockvault") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
