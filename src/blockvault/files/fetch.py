"""Fetching file content ahead of its use, on a small pool, in bounded memory.

A restore knows, directory by directory, which chunks its files will need and in
which order: :meth:`ChunkFetcher.want` queues them and a few threads fetch, verify
and decompress them (zstd, AES-GCM and BLAKE3 release the GIL) while the writer
writes the previous file. At most ``window`` chunks are in flight or waiting, so
memory stays below ``window`` x 8 MiB whatever the tree. Consecutive wants of one
chunk (small files packed together) are one fetch; the last chunk handed out is
kept for the next slice of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Final, Self

from blockvault.repo.repository import Repository

__all__ = ["ChunkFetcher"]

WORKERS: Final = 4
WINDOW: Final = 8


class ChunkFetcher:
    """Chunks in the order they were wanted: asking for one drops those wanted before
    it (their files were skipped); one never wanted is fetched directly. Not
    thread-safe: one consumer."""

    def __init__(self, repo: Repository, workers: int = WORKERS, window: int = WINDOW) -> None:
        self.repo = repo
        self.window = window
        self.fetched = 0  # chunks fetched
        self.fetched_bytes = 0  # their plaintext bytes
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="blockvault-fetch")
        self._wanted: deque[str] = deque()
        self._ahead: deque[tuple[str, Future[bytes]]] = deque()
        self._last: tuple[str, bytes] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._wanted.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead.clear()

    def want(self, chunk_ids: Iterable[str]) -> None:
        """Queue chunks that :meth:`get` will be asked for, in that order."""
        for chunk_id in chunk_ids:
            if not (self._wanted and self._wanted[-1] == chunk_id):
                self._wanted.append(chunk_id)
        self._fill()

    def _fill(self) -> None:
        while len(self._ahead) < self.window and self._wanted:
            chunk_id = self._wanted.popleft()
            if self._ahead and self._ahead[-1][0] == chunk_id:
                continue
            self._ahead.append((chunk_id, self._pool.submit(self.repo.get_chunk, chunk_id)))

    def get(self, chunk_id: str) -> bytes:
        """The verified plaintext of ``chunk_id`` (raises what the repository raises)."""
        if self._last is not None and self._last[0] == chunk_id:
            return self._last[1]
        self._last = None  # let it go before the next one arrives
        queued = any(head == chunk_id for head, _ in self._ahead) or chunk_id in self._wanted
        data: bytes | None = None if queued else self.repo.get_chunk(chunk_id)
        while data is None:
            head, future = self._ahead.popleft()
            self._fill()
            if head == chunk_id:
                data = future.result()
            else:
                future.cancel()  # wanted, then not asked for: a file was skipped
        self.fetched += 1
        self.fetched_bytes += len(data)
        self._last = (chunk_id, data)
        return data
