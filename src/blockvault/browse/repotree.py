"""The FUSE tree of a whole repository, or of one file snapshot, as ``restic mount``:

::

    ids/ID/...              every usable snapshot by its short id
    snapshots/TIME/...      by time (UTC, to the second; a clash adds the short id)
    hosts/HOST/TIME/...     by host, then time

Below a file snapshot's directory are its files (its trees, volume 0); below a disk
snapshot's, ``pN/`` for each partition blockvault's parsers read (ext, FAT, NTFS).
Mounting one file snapshot serves its files at the root. The catalog is read once,
at mount time. Volumes are opened when first visited and kept (a few, least recently
used first out), each behind its own lock: parsers are not thread-safe, libfuse
calls from several threads.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from mfusepy import FuseOSError, Operations

from blockvault.browse.filesystem import Entry
from blockvault.browse.fusetree import answer, entry_stat, node_stat, servable
from blockvault.browse.tree import FILES_VOLUME
from blockvault.browse.volume import PARSERS, Volume, open_volume
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = ["Catalog", "RepositoryTree"]

OPEN_VOLUMES: Final = 16


class Catalog:
    """The names the tree shows for snapshots."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        ordered = sorted(snapshots, key=lambda s: s.time)
        self.ids = {s.id[:12]: s for s in ordered}
        self.times = _by_time(ordered)
        hosts = sorted({s.host for s in ordered})
        self.hosts = {h: _by_time([s for s in ordered if s.host == h]) for h in hosts}


def _by_time(snapshots: list[Snapshot]) -> dict[str, Snapshot]:
    names: dict[str, Snapshot] = {}
    for snap in snapshots:
        name = snap.time[:19]
        if name in names:
            name = f"{name}-{snap.id[:12]}"
        names[name] = snap
    return names


class RepositoryTree(Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(
        self,
        repo: Repository,
        catalog: Catalog | None,
        single: Snapshot | None = None,
        mtime_ns: int = 0,
        on_init: Callable[[], None] | None = None,
    ) -> None:
        self.repo = repo
        self.catalog = catalog
        self.single = single  # one file snapshot at the root
        self.mtime_ns = mtime_ns
        self.on_init = on_init
        self._volumes: OrderedDict[tuple[str, int], tuple[Volume, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()
        self._streams: dict[int, tuple[threading.Lock, Any]] = {}  # the volume's lock
        self._next_fh = 1

    # --- where a path leads ------------------------------------------------------------
    def _locate(self, path: str) -> list[str] | tuple[Snapshot, int, str]:
        """A virtual directory's listing, or (snapshot, volume, path in the volume)."""
        parts = [p for p in path.split("/") if p]
        if self.single is not None:
            return self.single, FILES_VOLUME, "/" + "/".join(parts)
        catalog = self.catalog
        assert catalog is not None
        if not parts:
            return ["hosts", "ids", "snapshots"]
        table: dict[str, Snapshot] | None = None
        if parts[0] == "ids":
            table, rest = catalog.ids, parts[1:]
        elif parts[0] == "snapshots":
            table, rest = catalog.times, parts[1:]
        elif parts[0] == "hosts":
            if len(parts) == 1:
                return list(catalog.hosts)
            if parts[1] not in catalog.hosts:
                raise FuseOSError(errno.ENOENT)
            table, rest = catalog.hosts[parts[1]], parts[2:]
        if table is None:
            raise FuseOSError(errno.ENOENT)
        if not rest:
            return list(table)
        snap = table.get(rest[0])
        if snap is None:
            raise FuseOSError(errno.ENOENT)
        inner = rest[1:]
        if snap.kind == "files":
            return snap, FILES_VOLUME, "/" + "/".join(inner)
        parts_shown = [f"p{p.number}" for p in snap.imaged_partitions if p.filesystem in PARSERS]
        if not inner:
            return parts_shown
        if inner[0] not in parts_shown:
            raise FuseOSError(errno.ENOENT)
        return snap, int(inner[0][1:]), "/" + "/".join(inner[1:])

    def _volume(self, snap: Snapshot, number: int) -> tuple[Volume, threading.Lock]:
        key = (snap.id, number)
        with self._lock:
            if key in self._volumes:
                self._volumes.move_to_end(key)
                return self._volumes[key]
            opened = open_volume(self.repo, snap, number), threading.Lock()
            self._volumes[key] = opened
            while len(self._volumes) > OPEN_VOLUMES:
                self._volumes.popitem(last=False)
            return opened

    def _with(self, snap: Snapshot, number: int, path: str, call: Callable[[Volume], Any]) -> Any:
        try:
            volume, lock = self._volume(snap, number)
            with lock:
                return call(volume)
        except Exception as exc:  # libfuse must get an errno, never an exception
            raise FuseOSError(answer(exc, path)) from exc

    def _dir(self) -> dict[str, Any]:
        return node_stat(stat.S_IFDIR | 0o555, 0, self.mtime_ns, 2)

    # --- operations ----------------------------------------------------------------------
    def init(self, path: str) -> None:
        if self.on_init is not None:
            self.on_init()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        place = self._locate(path)
        if isinstance(place, list):
            return self._dir()
        snap, number, inner = place
        entry: Entry = self._with(snap, number, path, lambda v: v.entry(inner))
        return entry_stat(entry)

    def readdir(self, path: str, fh: int) -> list[str]:
        place = self._locate(path)
        if isinstance(place, list):
            return [".", "..", *place]
        snap, number, inner = place
        children = self._with(snap, number, path, lambda v: v.children(inner))
        return [".", "..", *(name for name, _e in children if servable(name, path))]

    def readlink(self, path: str) -> str:
        place = self._locate(path)
        if isinstance(place, list):
            raise FuseOSError(errno.EINVAL)
        snap, number, inner = place
        target: str = self._with(snap, number, path, lambda v: v.fs.readlink(inner))
        return target

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        place = self._locate(path)
        if isinstance(place, list):
            raise FuseOSError(errno.EISDIR)
        snap, number, inner = place
        try:
            _volume, lock = self._volume(snap, number)
        except Exception as exc:
            raise FuseOSError(answer(exc, path)) from exc
        stream = self._with(snap, number, path, lambda v: v.open(inner))
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._streams[fh] = (lock, stream)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        lock, stream = self._streams[fh]
        try:
            with lock:  # the lock of the volume the stream reads, even if evicted since
                stream.seek(offset)
                return bytes(stream.read(size))
        except Exception as exc:
            raise FuseOSError(answer(exc, path)) from exc

    def listxattr(self, path: str) -> list[str]:
        return []  # xattrs are restored, not shown: an empty list, not ENOTSUP

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        raise FuseOSError(errno.ENODATA)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._streams.pop(fh, None)
        return 0
