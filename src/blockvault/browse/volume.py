"""A partition of a snapshot opened as a filesystem, and the ``SNAPSHOT:PART/PATH`` address.

Everything browse does starts here: resolve the address, open the partition's
region with a small chunk cache, pick the parser by the filesystem recorded in
the manifest, and turn the parsers' failures into blockvault errors naming the
snapshot, partition and path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol, TypeVar, cast

from blockvault.browse.ext import ExtFilesystem
from blockvault.browse.fat import FatFilesystem
from blockvault.browse.filesystem import Entry, Filesystem, NotFound, normalize
from blockvault.browse.ntfs import NtfsFilesystem
from blockvault.browse.stream import RegionFile, region_reader
from blockvault.browse.tree import FILES_VOLUME, TreeFilesystem, files_record
from blockvault.errors import (
    BlockvaultError,
    BrowseError,
    FilePathNotFound,
    FilesystemError,
    PartitionNotFound,
    PathNotFound,
    UnsupportedFilesystem,
)
from blockvault.repo import format as fmt
from blockvault.repo.index import Index
from blockvault.repo.manifest import PartitionRecord, Snapshot
from blockvault.repo.repository import Repository

__all__ = [
    "PARSERS",
    "Address",
    "Volume",
    "default_partition",
    "format_address",
    "imaged_partition",
    "locate",
    "open_filesystem",
    "open_volume",
    "parse_address",
    "require_partition",
]

PARSERS: Final[dict[str, Callable[[BinaryIO, str], Filesystem[object]]]] = {
    "ext2": ExtFilesystem,
    "ext3": ExtFilesystem,
    "ext4": ExtFilesystem,
    "fat12": FatFilesystem,
    "fat16": FatFilesystem,
    "fat32": FatFilesystem,
    "ntfs": NtfsFilesystem,
}
"""Filesystem type as the manifest records it -> parser."""

_ADDRESS: Final = re.compile(r"^(?P<snapshot>[^:/]+)(?::(?P<part>[^/]*))?(?P<path>/.*)?$")
T = TypeVar("T")


@dataclass(frozen=True)
class Address:
    """``SNAPSHOT[:PART][/PATH]``: PART None when not given, PATH ``/`` by default."""

    snapshot: str
    partition: int | None
    path: str


def parse_address(text: str) -> Address:
    match = _ADDRESS.match(text)
    part = match.group("part") if match else None
    if match is None or (part and not part.isdigit()):  # "SNAP:/PATH": a file snapshot
        raise BrowseError(
            f"{text!r} is not SNAPSHOT[:PARTITION][/PATH], such as latest:2/etc/fstab "
            "(SNAPSHOT: an id, a unique prefix or latest; PARTITION: a number; a file "
            "snapshot has none: latest:/home/ann)"
        )
    return Address(
        match.group("snapshot"), int(part) if part else None, normalize(match.group("path") or "/")
    )


def format_address(snapshot_id: str, number: int, path: str) -> str:
    """The address of ``path`` in volume ``number``: ``ID:2/etc``, ``ID:/home`` for a
    file snapshot's trees."""
    return f"{snapshot_id[:12]}:{'' if number == FILES_VOLUME else number}{path}"


def open_filesystem(file: BinaryIO, fs_type: str) -> Filesystem[object]:
    """The parser for ``fs_type`` (as the manifest records it) over ``file``; raises
    ``KeyError`` for types no parser reads and the parser's error for bad content."""
    return PARSERS[fs_type](file, fs_type)


class Fetching(Protocol):
    @property
    def fetched(self) -> int: ...


class Volume:
    """One imaged partition of a snapshot, read as a filesystem (or a file snapshot's
    trees, volume ``FILES_VOLUME``). Not thread-safe."""

    def __init__(
        self,
        snapshot: Snapshot,
        record: PartitionRecord,
        reader: Fetching,
        fs: Filesystem[object],
    ) -> None:
        self.snapshot = snapshot
        self.record = record
        self.reader = reader
        self.fs = fs

    @property
    def number(self) -> int:
        return self.record.number

    @property
    def fetched(self) -> int:
        """Chunks fetched from the repository so far."""
        return self.reader.fetched

    def _guard(self, call: Callable[[], T], path: str) -> T:
        try:
            return call()
        except NotFound as exc:
            if self.snapshot.kind == "files":
                raise FilePathNotFound(
                    exc.detail, path=exc.missing, snapshot=self.snapshot.id[:12], errno=exc.errno
                ) from None
            raise PathNotFound(
                exc.detail,
                path=exc.missing,
                partition=self.number,
                snapshot=self.snapshot.id[:12],
                errno=exc.errno,
            ) from None
        except BlockvaultError:  # missing or damaged chunks, our own errors
            raise
        except Exception as exc:  # the parsers' own errors: damaged or unexpected metadata
            raise self._damaged(path, exc) from exc

    def _damaged(self, path: str, exc: Exception) -> FilesystemError:
        return FilesystemError(
            f"cannot read {path}: {type(exc).__name__}: {exc}",
            fs=self.record.filesystem,
            where=f"in partition {self.number} of snapshot {self.snapshot.id[:12]}",
        )

    def entry(self, path: str, follow: bool = False) -> Entry:
        return self._guard(lambda: self.fs.entry(path, follow), path)

    def listdir(self, path: str) -> list[Entry]:
        return self._guard(lambda: self.fs.listdir(path), path)

    def children(self, path: str) -> list[tuple[str, Entry]]:
        return self._guard(lambda: self.fs.children(path), path)

    def open(self, path: str) -> BinaryIO:
        return self._guard(lambda: self.fs.open(path), path)

    def read_all(self, stream: BinaryIO, path: str, size: int) -> bytes:
        return self._guard(lambda: stream.read(size), path)

    def walk(self, path: str = "/") -> Iterator[Entry]:
        return (entry for _names, entry in self.walk_names(path))

    def walk_names(self, path: str = "/") -> Iterator[tuple[tuple[str, ...], Entry]]:
        it = self.fs.walk_names(path)
        while True:
            item = self._guard(lambda: next(it, None), path)
            if item is None:
                return
            yield item


def imaged_partition(repo: Repository, snapshot: Snapshot, number: int) -> PartitionRecord:
    if snapshot.kind == "files":
        if number != FILES_VOLUME:
            raise BrowseError(
                f"snapshot {snapshot.id[:12]} is a file snapshot, without partitions: "
                f"address its files as {snapshot.id[:12]}:/PATH"
            )
        return files_record(snapshot)
    record = snapshot.partition(number)
    if record is None or not record.imaged:
        numbers = ", ".join(str(p.number) for p in snapshot.imaged_partitions) or "none"
        raise PartitionNotFound(
            f" (imaged: {numbers})",
            snapshot=snapshot.id[:12],
            partition=number,
            repo=repo.location,
        )
    return record


def default_partition(snapshot: Snapshot) -> int | None:
    """The partition an address without ``:PART`` means: the only one of a disk without
    a partition table, else none (a file snapshot: its one volume)."""
    if snapshot.kind == "files":
        return FILES_VOLUME
    if snapshot.table == "none" and len(snapshot.partitions) == 1:
        return snapshot.partitions[0].number
    return None


def open_volume(
    repo: Repository, snapshot: Snapshot, number: int, index: Index | None = None
) -> Volume:
    """Partition ``number`` of ``snapshot`` as a filesystem; fetches only the chunks
    its superblock and the paths later asked for need."""
    record = imaged_partition(repo, snapshot, number)
    if snapshot.kind == "files":
        trees = TreeFilesystem(repo, snapshot)
        return Volume(snapshot, record, trees, cast(Filesystem[object], trees))
    if record.filesystem not in PARSERS:
        raise UnsupportedFilesystem(
            fs=record.filesystem or "unknown content",
            partition=number,
            snapshot=snapshot.id[:12],
            repo=repo.location,
        )
    index = index if index is not None else repo.load_index(snapshot)
    region = index.region(fmt.REGION_PARTITION, number)
    if region is None:
        raise PartitionNotFound(
            " in its index", snapshot=snapshot.id[:12], partition=number, repo=repo.location
        )
    reader = region_reader(repo, region, index.chunk_size)
    try:
        fs = open_filesystem(cast(BinaryIO, RegionFile(reader)), record.filesystem)
    except BlockvaultError:
        raise
    except Exception as exc:
        raise FilesystemError(
            f"cannot be opened: {type(exc).__name__}: {exc}",
            fs=record.filesystem,
            where=f"in partition {number} of snapshot {snapshot.id[:12]}",
        ) from exc
    return Volume(snapshot, record, reader, fs)


def locate(repo: Repository, text: str) -> tuple[Snapshot, Address, int | None]:
    """Parse an address and resolve its snapshot; the partition is the one given, the
    default one of a disk without table, or None (the caller lists partitions or
    asks for one)."""
    address = parse_address(text)
    snap = repo.resolve(address.snapshot)
    number = address.partition if address.partition is not None else default_partition(snap)
    if number is not None:
        imaged_partition(repo, snap, number)
    return snap, address, number


def require_partition(snap: Snapshot, text: str, number: int | None) -> int:
    if number is None:
        parts = ", ".join(str(p.number) for p in snap.imaged_partitions)
        raise BrowseError(
            f"{text!r} names no partition; add :N, such as {snap.id[:12]}:"
            f"{snap.imaged_partitions[0].number if snap.imaged_partitions else 1}/ "
            f"(imaged partitions: {parts or 'none'})"
        )
    return number
