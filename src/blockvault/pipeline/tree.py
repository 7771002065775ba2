"""The safe tree writer: files, directories and symlinks under one destination, never outside.

Every tree-writing feature (``extract``, file-backup restore) writes through
:class:`TreeWriter`, because every name it is given comes from a snapshot and may
be hostile. Its invariants:

* A path is a sequence of names below the destination, each checked on its own
  (:func:`check_name`): not empty, not ``.`` or ``..``, no ``/`` (nor the source
  filesystem's other separators, such as ``\\`` on FAT and NTFS), no NUL, at most
  255 bytes. A bad name raises :class:`~blockvault.errors.UnsafeName`; the caller
  reports and skips that entry.
* Parents are walked name by name from the destination's directory descriptor with
  ``O_NOFOLLOW | O_DIRECTORY``, and every entry is made relative to its parent's
  descriptor (``mkdir``/``symlink``/``rename`` with ``dir_fd``): a symlink already in
  the destination, or one this writer made, is never followed; a path through one is
  refused as :class:`~blockvault.errors.UnsafeName`.
* A file appears under its name only complete: it is written (sparse: all-zero
  blocks stay holes) to a temporary name in its directory, given its metadata,
  fsynced and renamed into place. A failure removes the temporary file. With
  ``sync_each=False`` the per-file fsync is left out and :meth:`TreeWriter.sync`
  flushes everything once at the end (a restore of many small files: a kill still
  leaves only whole files under their names, a power cut before the end may not).
* Symlinks are made as symlinks, with their targets as given (an absolute target
  is kept: it means the restored system's root); they are never followed.
* Nothing existing is replaced unless ``overwrite`` (then a file or symlink is
  replaced and a directory merged into); a name written twice in one session (a
  duplicate directory entry) is refused as unsafe.
* Device nodes and FIFOs are made (``mknod``/``mkfifo`` at a temporary name) but
  never opened; hard links join two paths that are both walked as above;
  :meth:`TreeWriter.remove` deletes a subtree by descriptors, unlinking a symlink
  and never following it. Metadata is set in the order that keeps it: owner, then
  mode (``chown`` clears set-id bits), then xattrs (``chown`` and writes clear
  ``security.capability``; an ACL xattr after the mode, which it agrees with),
  then times.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from blockvault.errors import TargetNotEmpty, UnsafeName

__all__ = ["HOLE_GRAIN", "NAME_MAX", "NODE_TYPES", "Block", "Metadata", "TreeWriter", "check_name"]

NAME_MAX: Final = 255  # bytes in one name, as Linux filesystems allow
HOLE_GRAIN: Final = 64 * 1024  # zero runs this long (and aligned) become holes
Block = bytes | memoryview | int  # data, or (an int) a hole of that many bytes
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_PREFIX: Final = ".blockvault-tmp-"
NODE_TYPES: Final = {"chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK, "fifo": stat.S_IFIFO}


@dataclass(frozen=True)
class Metadata:
    """What to set on an entry; ``None`` leaves it as made. Owners are set only by a
    writer made with ``owners``; permission bits are ignored for symlinks."""

    mode: int | None = None  # permission bits (st_mode is fine: the type bits are dropped)
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()  # set as given, after owner and mode


def check_name(name: str, separators: str = "/") -> None:
    """Raise :class:`UnsafeName` unless ``name`` is one plain name a directory may hold."""
    reason = None
    if name in ("", ".", ".."):
        reason = f"the name {name!r} would not stay in its directory"
    elif "\0" in name:
        reason = "the name holds a NUL byte"
    elif any(sep in name for sep in separators + "/"):
        reason = "the name holds a path separator"
    elif len(os.fsencode(name)) > NAME_MAX:
        reason = f"the name is longer than {NAME_MAX} bytes"
    if reason is not None:
        raise UnsafeName(reason, path=name)


class TreeWriter:
    """Writes entries below ``dest`` (an existing directory, opened once). Use as a
    context manager, or call :meth:`close`. Not thread-safe."""

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        owners: bool = False,
        separators: str = "/",
        sync_each: bool = True,
        track_names: bool = True,
    ) -> None:
        self.dest = os.fspath(dest)
        self.sync_each = sync_each
        # remember every path made, to refuse a duplicate entry; a caller whose source
        # cannot hold one (tree objects are sorted and unique) saves that memory
        self.track_names = track_names
        self.overwrite = overwrite
        self.owners = owners
        self.separators = separators
        self._made: set[tuple[str, ...]] = set()
        # the parent walked last and its descriptor: entries of one directory come in a
        # row, and walking each from the destination again was most of a restore's time
        self._last_parent: tuple[tuple[str, ...], int] | None = None
        self._root = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def sync(self) -> None:
        """Make everything written so far durable (the writes ``sync_each=False`` left
        unsynced): ``syncfs`` of the destination's filesystem where libc has it."""
        _syncfs(self._root)

    def _forget_parent(self) -> None:
        """Drop the cached parent: a directory was removed or replaced."""
        if self._last_parent is not None:
            os.close(self._last_parent[1])
            self._last_parent = None

    def close(self) -> None:
        self._forget_parent()
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    def __enter__(self) -> TreeWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the operations ------------------------------------------------------------
    def make_dir(self, path: Sequence[str]) -> None:
        """Make directory ``path`` (mode 0700 until :meth:`set_metadata`), or merge into
        an existing one with ``overwrite``."""
        with self._parent(path) as (parent, name):
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if not self.overwrite:
                    raise TargetNotEmpty("it exists", path=self._show(path)) from None
                if not stat.S_ISDIR(st.st_mode):  # a file or symlink in the way goes
                    self._forget_parent()
                    os.unlink(name, dir_fd=parent)
                    os.mkdir(name, 0o700, dir_fd=parent)

    def write_file(
        self, path: Sequence[str], blocks: Iterable[Block], meta: Metadata | None = None
    ) -> int:
        """Write ``blocks`` as file ``path`` (temp name, fsync, rename); returns its size.
        A block that is an ``int`` is a hole of that many zero bytes, never written."""
        with self._parent(path) as (parent, name):
            self._check_replaceable(parent, name, path)
            temp = _TEMP_PREFIX + secrets.token_hex(8)
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
            try:
                try:
                    size = _write_sparse(fd, blocks)
                    self._apply(fd, meta, kind="file")
                    if self.sync_each:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                raise
            return size

    def make_symlink(self, path: Sequence[str], target: str, meta: Metadata | None = None) -> None:
        """Make symlink ``path`` pointing to ``target`` (kept as given, never followed)."""
        if not target or "\0" in target:
            raise UnsafeName("the symlink's target is empty or holds a NUL byte", path=path[-1])
        with self._parent(path) as (parent, name):
            self._check_replaceable(parent, name, path)
            temp = _TEMP_PREFIX + secrets.token_hex(8)
            os.symlink(target, temp, dir_fd=parent)
            try:
                self._apply_at(parent, temp, meta)
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                raise

    def make_node(
        self, path: Sequence[str], kind: str, rdev: int = 0, meta: Metadata | None = None
    ) -> None:
        """Make a device node or FIFO (``kind`` a key of ``NODE_TYPES``); never opened."""
        with self._parent(path) as (parent, name):
            self._check_replaceable(parent, name, path)
            temp = _TEMP_PREFIX + secrets.token_hex(8)
            os.mknod(temp, 0o600 | NODE_TYPES[kind], rdev, dir_fd=parent)
            try:
                self._apply_at(parent, temp, meta, chmod=True)
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                raise

    def link(self, path: Sequence[str], existing: Sequence[str]) -> None:
        """Make ``path`` a hard link to ``existing``, an entry this writer made."""
        with (
            self._parent(existing, made=True) as (src_parent, src_name),
            self._parent(path) as (parent, name),
        ):
            self._check_replaceable(parent, name, path)
            temp = _TEMP_PREFIX + secrets.token_hex(8)
            os.link(src_name, temp, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)
            try:
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                raise

    def lstat(self, path: Sequence[str]) -> os.stat_result | None:
        """The entry at ``path`` as it is now (``()``: the destination), or None when it
        or a parent is missing; a parent that is not a directory raises ``UnsafeName``."""
        if not path:
            return os.fstat(self._root)
        try:
            with self._parent(path, made=True) as (parent, name):
                return os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except UnsafeName as exc:
            if "is missing" in exc.fields["detail"]:
                return None
            raise

    def readlink(self, path: Sequence[str]) -> str:
        """The target of the symlink at ``path`` (never followed)."""
        with self._parent(path, made=True) as (parent, name):
            return os.readlink(name, dir_fd=parent)

    def listdir(self, path: Sequence[str]) -> list[str]:
        """The names in directory ``path`` (``()``: the destination) now, temporary
        files of this writer left out."""
        with self._directory(path) as fd:
            names = [os.fsdecode(n) for n in os.listdir(fd)]
        return sorted(n for n in names if not n.startswith(_TEMP_PREFIX))

    def remove_temporaries(self, path: Sequence[str]) -> int:
        """Delete the temporary files a killed writer left in directory ``path`` (a
        rerun's first step there); how many."""
        with self._directory(path) as fd:
            stale = [n for n in os.listdir(fd) if n.startswith(_TEMP_PREFIX)]
            for name in stale:
                _remove_at(fd, name)
        return len(stale)

    def remove(self, path: Sequence[str]) -> None:
        """Delete the entry at ``path`` and, for a directory, all below it; a symlink
        is unlinked, never followed."""
        self._forget_parent()
        with self._parent(path, made=True) as (parent, name):
            _remove_at(parent, name)

    def read_file(self, path: Sequence[str], block: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of the regular file at ``path`` (for verifying what was written)."""
        with self._parent(path, made=True) as (parent, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeName("it is not a regular file", path=self._show(path))
            while data := os.read(fd, block):
                yield data
        finally:
            os.close(fd)

    def set_metadata(self, path: Sequence[str], meta: Metadata) -> None:
        """Set ``meta`` on the entry at ``path`` (a directory's times after its children
        are written); a symlink gets owners and times, never a mode."""
        with self._parent(path, made=True) as (parent, name):
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                # symlinks, devices and FIFOs are never opened: a device's open acts
                self._apply_at(parent, name, meta, chmod=not stat.S_ISLNK(st.st_mode))
                return
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # replaced by a symlink since the stat
                    raise
                self._apply_at(parent, name, meta)
                return
            try:
                kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
                self._apply(fd, meta, kind=kind)
            finally:
                os.close(fd)

    # --- walking -------------------------------------------------------------------
    @contextlib.contextmanager
    def _directory(self, path: Sequence[str]) -> Iterator[int]:
        """A descriptor of directory ``path`` (``()``: the destination), walked safely."""
        if not path:
            fd = os.dup(self._root)
        else:
            with self._parent(path, made=True) as (parent, name):
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise UnsafeName(
                        "is not a directory (a symlink is never followed)", path=self._show(path)
                    ) from None
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _parent(self, path: Sequence[str], made: bool = False) -> Iterator[tuple[int, str]]:
        """The descriptor of ``path``'s parent (walked without following symlinks) and
        its last name. ``made``: the entry exists already (no duplicate check)."""
        if isinstance(path, str):
            raise TypeError("a path is a sequence of names, not a string")
        if not path:
            raise UnsafeName("an empty path names the destination itself", path=self.dest)
        try:
            for name in path:
                check_name(name, self.separators)
        except UnsafeName as exc:
            raise UnsafeName(exc.fields["detail"], path=self._show(path)) from None
        key = tuple(path)
        if not made and self.track_names:
            if key in self._made:
                raise UnsafeName(
                    "the name appears twice in its directory; the first was kept",
                    path=self._show(path),
                )
            self._made.add(key)
        cached = self._last_parent
        if cached is not None and cached[0] == key[:-1]:
            fd = os.dup(cached[1])  # the same parent as last time: walked already
            names: Sequence[str] = ()
        else:
            fd, names = os.dup(self._root), path[:-1]
        try:
            for depth, name in enumerate(names):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        raise
                    where = self._show(path[: depth + 1])
                    why = "is missing" if exc.errno == errno.ENOENT else "is not a directory"
                    raise UnsafeName(
                        f"its parent {where!r} {why} (a symlink is never followed)",
                        path=self._show(path),
                    ) from None
                os.close(fd)
                fd = child
            if names:
                self._forget_parent()
                self._last_parent = (key[:-1], os.dup(fd))
            yield fd, path[-1]
        finally:
            os.close(fd)

    def _check_replaceable(self, parent: int, name: str, path: Sequence[str]) -> None:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not self.overwrite:
            raise TargetNotEmpty("it exists", path=self._show(path))
        if stat.S_ISDIR(st.st_mode):
            raise TargetNotEmpty("a directory is in the way", path=self._show(path))

    def _show(self, path: Sequence[str]) -> str:
        return os.path.join(self.dest, *path)

    # --- metadata ------------------------------------------------------------------
    def _apply(self, fd: int, meta: Metadata | None, kind: str) -> None:
        if meta is None:
            return
        if self.owners and meta.uid is not None and meta.gid is not None:
            os.fchown(fd, meta.uid, meta.gid)
        if meta.mode is not None:  # after chown, which clears set-id bits
            os.fchmod(fd, stat.S_IMODE(meta.mode))
        for key, value in meta.xattrs:
            os.setxattr(fd, key, value)
        times = _times(meta)
        if times is not None:
            os.utime(fd, ns=times)

    def _apply_at(self, parent: int, name: str, meta: Metadata | None, chmod: bool = False) -> None:
        """Metadata of the entry ``name`` itself, by name: a symlink (owners, xattrs and
        times; no mode), or with ``chmod`` a device or FIFO, which is never opened."""
        if meta is None:
            return
        if self.owners and meta.uid is not None and meta.gid is not None:
            os.chown(name, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
        if chmod and meta.mode is not None:
            os.chmod(name, stat.S_IMODE(meta.mode), dir_fd=parent)
        for key, value in meta.xattrs:  # by the parent's descriptor: no path is walked
            os.setxattr(f"/proc/self/fd/{parent}/{name}", key, value, follow_symlinks=False)
        times = _times(meta)
        if times is not None:
            os.utime(name, ns=times, dir_fd=parent, follow_symlinks=False)


def _syncfs(fd: int) -> None:
    """``syncfs(2)`` on ``fd``'s filesystem (Python has no binding); ``sync`` without it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    os.sync()


def _remove_at(parent: int, name: str) -> None:
    """Delete ``name`` in directory ``parent``, a directory with all below it."""
    try:
        os.unlink(name, dir_fd=parent)
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM: unlink of a directory on Linux
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        for child in os.listdir(fd):
            _remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _times(meta: Metadata) -> tuple[int, int] | None:
    if meta.mtime_ns is None:
        return None
    return (meta.atime_ns if meta.atime_ns is not None else meta.mtime_ns, meta.mtime_ns)


def _write_sparse(fd: int, blocks: Iterable[Block]) -> int:
    """Write ``blocks`` from offset 0, seeking over holes and aligned all-zero grains;
    the size."""
    zero = bytes(HOLE_GRAIN)
    done = 0
    for block in blocks:
        if isinstance(block, int):
            done += block
            continue
        view = memoryview(block)
        for start in range(0, len(view), HOLE_GRAIN):
            piece = view[start : start + HOLE_GRAIN]
            if piece != zero[: len(piece)]:
                _pwrite_all(fd, piece, done + start)
        done += len(view)
    os.ftruncate(fd, done)
    return done


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
