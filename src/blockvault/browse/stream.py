"""Snapshot regions as seekable, read-only files, for parsers that want a file object.

The filesystem libraries read through ``seek`` + ``read``; these adapters turn
that into ``RegionReader.read_at`` calls, so only the chunks a parser touches are
fetched. A ``RegionFile`` keeps a position and is therefore not shared between
threads; the ``RegionReader`` under it is.
"""

from __future__ import annotations

import io
from typing import Final

from blockvault.repo import format as fmt
from blockvault.repo.image import RegionReader
from blockvault.repo.index import Index, Region
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = ["BROWSE_CACHE_CHUNKS", "DiskReader", "RegionFile", "region_reader"]

BROWSE_CACHE_CHUNKS: Final = 16
"""Chunks each region keeps decoded (64 MiB at the default chunk size): enough for a
directory walk to revisit inode tables and directory blocks without refetching them."""


def region_reader(repo: Repository, region: Region, chunk_size: int) -> RegionReader:
    return RegionReader(repo, region, chunk_size, cache=BROWSE_CACHE_CHUNKS)


class RegionFile(io.RawIOBase):
    """A read-only file over a ``RegionReader`` (anything with ``size`` and ``read_at``)."""

    def __init__(self, reader: RegionReader | DiskReader) -> None:
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


class DiskReader:
    """The whole disk of a snapshot, sharing the partitions' readers (and their caches)
    with whoever else reads them; bytes outside partitions come from the boot areas."""

    def __init__(
        self, repo: Repository, snapshot: Snapshot, index: Index, parts: dict[int, RegionReader]
    ) -> None:
        self.size = snapshot.disk_size
        disk = index.region(fmt.REGION_DISK)
        if disk is None:
            raise ValueError("index has no disk region")
        self._disk = region_reader(repo, disk, index.chunk_size)
        self._parts = sorted(parts.values(), key=lambda r: r.region.start)

    def read_at(self, offset: int, length: int) -> bytes:
        out = bytearray()
        pos, end = offset, min(offset + length, self.size)
        while pos < end:
            part = next(
                (r for r in self._parts if r.region.start <= pos < r.region.start + r.size), None
            )
            if part is not None:
                n = min(end, part.region.start + part.size) - pos
                out += part.read_at(pos - part.region.start, n)
            else:
                nxt = min(
                    (r.region.start for r in self._parts if r.region.start > pos), default=end
                )
                n = min(end, nxt) - pos
                out += self._disk.read_at(pos, n)
            pos += n
        return bytes(out)
