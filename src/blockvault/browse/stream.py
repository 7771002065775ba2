"""Snapshot regions as seekable, read-only files, for parsers that want a file object.

The filesystem libraries read through ``seek`` + ``read``; these adapters turn
that into ``RegionReader.read_at`` calls, so only the chunks a parser touches are
fetched. A ``RegionFile`` keeps a position and is therefore not shared between
threads; the ``RegionReader`` under it is.
"""

from __future__ import annotations

import io
from typing import Final

from blockvault.repo.image import RegionReader, SnapshotImage
from blockvault.repo.index import Region
from blockvault.repo.repository import Repository

__all__ = ["BROWSE_CACHE_BYTES", "RegionFile", "cache_chunks", "region_reader"]

BROWSE_CACHE_BYTES: Final = 64 * 1024 * 1024
"""Decoded chunks each region keeps (at least 16): enough for a directory walk to
revisit inode tables and directory blocks without refetching them."""


def cache_chunks(chunk_size: int) -> int:
    return max(16, BROWSE_CACHE_BYTES // chunk_size)


def region_reader(repo: Repository, region: Region, chunk_size: int) -> RegionReader:
    return RegionReader(repo, region, chunk_size, cache=cache_chunks(chunk_size))


class RegionFile(io.RawIOBase):
    """A read-only file over a ``RegionReader`` (anything with ``size`` and ``read_at``)."""

    def __init__(self, reader: RegionReader | SnapshotImage) -> None:
        super().__init__()
        self.reader = reader
        self.size = reader.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(22, f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self.size - self._pos))
        if n:
            memoryview(buffer)[:n] = self.reader.read_at(self._pos, n)
            self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        # one read_at instead of RawIOBase's readinto round trip through a bytearray
        n = self.size - self._pos if size is None or size < 0 else size
        n = max(0, min(n, self.size - self._pos))
        data = self.reader.read_at(self._pos, n) if n else b""
        self._pos += n
        return data
