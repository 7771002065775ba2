"""The read-only tree a FUSE mount of a snapshot serves.

``/disk.img`` is the whole disk, ``/pN.img`` each imaged partition, read at any
offset through region readers (holes and unused blocks read as zeros). With
filesystem views, ``/pN/`` shows partition N's files through blockvault's own
parsers; directories meant for kernel mounts (``kernel_dirs``) are served empty,
for ``mount`` to cover.

libfuse calls these methods from several threads: region readers are
thread-safe, parsers are not, so each view has a lock.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mfusepy import FuseOSError, Operations

from blockvault.browse.filesystem import Entry, NotFound
from blockvault.browse.volume import Volume
from blockvault.errors import BlockvaultError, PathNotFound, UnsafeName
from blockvault.pipeline.tree import check_name

__all__ = ["SnapshotTree", "answer", "entry_stat", "node_stat", "servable"]

log = logging.getLogger(__name__)


def answer(exc: Exception, path: str) -> int:
    """The errno a reader of ``path`` gets for ``exc``, with the cause logged: a path
    that is not there or not what was asked for says so (``ENOENT``, ``ENOTDIR``,
    ``EISDIR``, ``ELOOP``...); missing or damaged data, a failing repository and
    unreadable metadata are ``EIO``, logged as errors; anything else is a bug, ``EIO``
    with its traceback in the log."""
    if isinstance(exc, NotFound | PathNotFound):  # an answer, not a failure
        log.debug("%s: %s", path, exc)
        return (
            exc.errno if isinstance(exc, NotFound) else int(exc.fields.get("errno", errno.ENOENT))
        )
    if isinstance(exc, BlockvaultError):
        log.error("%s: %s", path, exc)
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        log.error("%s: %s", path, exc)
        return exc.errno
    log.exception("%s: unexpected %s (a bug: please report it)", path, type(exc).__name__)
    return errno.EIO


def servable(name: str, path: str) -> bool:
    """Whether a stored name can be listed: the kernel fails a whole listing (EIO) for
    one holding ``/``, and ``..``, NUL or an overlong name is no better."""
    try:
        check_name(name)
    except UnsafeName as exc:
        log.warning("%s: not listed: %s", path, exc)
        return False
    return True


def node_stat(mode: int, size: int, mtime_ns: int, nlink: int = 1) -> dict[str, Any]:
    """What ``getattr`` answers for an entry the tree makes up (images, directories)."""
    return {
        "st_mode": mode,
        "st_size": size,
        "st_nlink": nlink,
        "st_mtime": mtime_ns,
        "st_atime": mtime_ns,
        "st_ctime": mtime_ns,
        "st_uid": 0,
        "st_gid": 0,
        "st_blocks": (size + 511) // 512,
    }


def entry_stat(entry: Entry) -> dict[str, Any]:
    """What ``getattr`` answers for an entry of a snapshot's filesystem."""
    mode = entry.mode & ~0o222  # read-only, whatever the snapshot says
    result = node_stat(mode, entry.size, entry.mtime_ns, 2 if entry.kind == "dir" else 1)
    if entry.uid is not None:
        result["st_uid"], result["st_gid"] = entry.uid, entry.gid
    if entry.atime_ns is not None:
        result["st_atime"] = entry.atime_ns
    return result


class Image(Protocol):
    """A region or the whole disk: ``RegionReader`` or ``SnapshotImage``."""

    size: int

    def read_at(self, offset: int, length: int) -> bytes: ...


class SnapshotTree(Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(
        self,
        images: Mapping[str, Image],
        views: dict[str, Volume],
        kernel_dirs: set[str],
        mtime_ns: int,
        on_init: Callable[[], None] | None = None,
    ) -> None:
        self.images = images  # "disk.img" -> reader
        self.views = views  # "p1" -> volume
        self.kernel_dirs = kernel_dirs  # "p2": served empty, for a kernel mount on top
        self.mtime_ns = mtime_ns
        self.on_init = on_init
        self._locks = {name: threading.Lock() for name in views}
        self._streams: dict[int, tuple[str, Any]] = {}
        self._next_fh = 1
        self._fh_lock = threading.Lock()

    # --- helpers ---------------------------------------------------------------------
    def _split(self, path: str) -> tuple[str, str]:
        top, _, rest = path.lstrip("/").partition("/")
        return top, "/" + rest

    def _stat(self, mode: int, size: int, mtime_ns: int, nlink: int = 1) -> dict[str, Any]:
        return node_stat(mode, size, mtime_ns, nlink)

    def _entry_stat(self, entry: Entry) -> dict[str, Any]:
        return entry_stat(entry)

    def _view(self, name: str, call: Callable[[Volume], Any], what: str = "") -> Any:
        volume = self.views.get(name)
        if volume is None:
            raise FuseOSError(errno.ENOENT)
        with self._locks[name]:
            try:
                return call(volume)
            except Exception as exc:  # libfuse must get an errno, never an exception
                raise FuseOSError(answer(exc, f"/{name}{what}")) from exc

    # --- operations --------------------------------------------------------------------
    def init(self, path: str) -> None:
        if self.on_init is not None:
            self.on_init()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        top, rest = self._split(path)
        if not top:
            return self._stat(stat.S_IFDIR | 0o555, 0, self.mtime_ns, 2)
        if top in self.images and rest == "/":
            return self._stat(stat.S_IFREG | 0o444, self.images[top].size, self.mtime_ns)
        if top in self.kernel_dirs and rest == "/":
            return self._stat(stat.S_IFDIR | 0o555, 0, self.mtime_ns, 2)
        entry = self._view(top, lambda v: v.entry(rest), rest)
        return self._entry_stat(entry)

    def readdir(self, path: str, fh: int) -> list[str]:
        top, rest = self._split(path)
        if not top:
            return [".", "..", *self.images, *self.views, *self.kernel_dirs]
        if top in self.kernel_dirs:
            return [".", ".."]
        children: list[tuple[str, Entry]] = self._view(top, lambda v: v.children(rest), rest)
        return [".", "..", *(name for name, _e in children if servable(name, path))]

    def readlink(self, path: str) -> str:
        top, rest = self._split(path)
        target: str = self._view(top, lambda v: v.fs.readlink(rest), rest)
        return target

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        top, rest = self._split(path)
        if top in self.images and rest == "/":
            return 0
        stream = self._view(top, lambda v: v.open(rest), rest)
        with self._fh_lock:
            fh = self._next_fh
            self._next_fh += 1
            self._streams[fh] = (top, stream)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if fh == 0:
            top, _ = self._split(path)
            image = self.images[top]
            size = max(0, min(size, image.size - offset))
            try:
                data: bytes = image.read_at(offset, size) if size else b""
            except Exception as exc:  # a missing or damaged chunk: the reader sees EIO
                raise FuseOSError(answer(exc, path)) from exc
            return data
        name, stream = self._streams[fh]

        def read(_volume: Volume) -> bytes:
            stream.seek(offset)
            chunk: bytes = stream.read(size)
            return chunk

        return bytes(self._view(name, read, path.partition(name)[2]))

    def release(self, path: str, fh: int) -> int:
        with self._fh_lock:
            self._streams.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        total = sum(i.size for i in self.images.values())
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": total // 4096, "f_namemax": 255}
