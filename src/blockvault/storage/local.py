"""Objects as files in a local directory (the default repository location).

``write`` is temp file, fsync, rename, fsync of the folder: durable when it returns.
Chunks come in thousands, and an fsync each costs a journal commit each, so
``write_batched`` writes the temporary file only; ``flush`` (every ``BATCH_BYTES``,
``BATCH_OBJECTS`` or ``BATCH_SECONDS``, and before a snapshot commits) syncs the
filesystem once, renames the whole batch into place and syncs again. A name thus
never points at data that a power cut could lose, and a killed process leaves only
temporary files, which ``sweep_partial`` (run by gc) removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from blockvault.errors import ObjectNotFound, StorageError
from blockvault.storage import modes
from blockvault.storage.backend import Backend, Capabilities, check_size

__all__ = ["LocalBackend"]

BATCH_BYTES = 64 * 1024 * 1024
BATCH_OBJECTS = 512
BATCH_SECONDS = 1.0
TMP_PREFIX = ".tmp-"

_libc = ctypes.CDLL(None, use_errno=True)


def _sync_filesystem(path: Path) -> None:
    """syncfs(2) on the filesystem holding ``path``: one flush for a whole batch."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class LocalBackend(Backend):
    """Each object is a file under ``root``; see the module docstring on durability."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.location = str(self.root)
        self.capabilities = Capabilities(local_path=str(self.root), parallel_io=4)
        self._known_dirs: set[Path] = set()
        self._file_mode: int | None = None  # once the reference object exists
        # final path -> (temporary file, size): written, not yet durable nor renamed;
        # a flush moves its batch to _flushing until the renames are done
        self._pending: dict[Path, tuple[Path, int]] = {}
        self._pending_bytes = 0  # what the temporary files of _pending hold
        self._flushing: dict[Path, tuple[Path, int]] = {}
        self._last_flush = time.monotonic()
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise StorageError(f"invalid object name {name!r}", location=self.location)
        return self.root / name

    def read(self, name: str, limit: int | None = None) -> bytes:
        path = self._path(name)
        try:
            return self._read_file(path, name, limit)
        except FileNotFoundError:
            pending = self._pending.get(path) or self._flushing.get(path)
            if pending is not None:
                with contextlib.suppress(FileNotFoundError):
                    return self._read_file(pending[0], name, limit)
                with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                    return self._read_file(path, name, limit)
            raise ObjectNotFound(name=name, location=self.location) from None
        except OSError as exc:
            raise StorageError(f"reading {name}: {exc.strerror}", location=self.location) from None

    def _read_file(self, path: Path, name: str, limit: int | None) -> bytes:
        """The file's bytes, its size checked on the open descriptor first (the file
        the name points to may change, the open one does not)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            check_size(name, size, limit, self.location)
            # the size seen plus a byte that shows growth: read(limit + 1) would allocate
            # the whole bound first (1 GiB for an index), which a small machine refuses
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(-1 if limit is None else max(0, limit + 1 - len(data)))
        check_size(name, len(data), limit, self.location)  # grew since the fstat
        return data

    def write(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        tmp = self._write_temporary(name, path, data, durable=True)
        try:
            os.rename(tmp, path)
            self._sync_dir(path.parent)
        except BaseException as exc:  # an interruption too: no temporary file stays
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not isinstance(exc, OSError):
                raise
            raise StorageError(f"writing {name}: {exc.strerror}", location=self.location) from None

    def write_batched(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        tmp = self._write_temporary(name, path, data, durable=False)
        with self._pending_lock:
            self._pending[path] = (tmp, len(data))
            self._pending_bytes += len(data)
            due = (
                self._pending_bytes >= BATCH_BYTES
                or len(self._pending) >= BATCH_OBJECTS
                or time.monotonic() - self._last_flush >= BATCH_SECONDS
            )
        if due:
            self.flush()

    def flush(self) -> None:
        with self._flush_lock:
            with self._pending_lock:
                batch = self._flushing = self._pending  # later writes wait for the next flush
                self._pending = {}
                self._pending_bytes = 0
                self._last_flush = time.monotonic()
            if not batch:
                return
            try:
                _sync_filesystem(self.root)  # the data of every file in the batch
                for path, (tmp, _) in batch.items():
                    os.rename(tmp, path)
                _sync_filesystem(self.root)  # the renames
            except OSError as exc:
                for tmp, _ in batch.values():
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                raise StorageError(
                    f"storing chunks: {exc.strerror}", location=self.location
                ) from None
            finally:
                self._flushing = {}

    def sweep_partial(self, before: float) -> int:
        removed = 0
        for dirpath, _, filenames in os.walk(self.root):
            for filename in filenames:
                if not filename.startswith(TMP_PREFIX):
                    continue
                path = Path(dirpath) / filename
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < before:
                        path.unlink()
                        removed += 1
        return removed

    def _new_file_mode(self) -> int:
        """See ``modes``: private, or as the repository's config when it exists."""
        if self._file_mode is None:
            try:
                reference = (self.root / modes.REFERENCE).stat().st_mode
            except FileNotFoundError:
                return modes.PRIVATE_FILE
            self._file_mode = modes.file_mode(reference)
        return self._file_mode

    def _make_folders(self, folder: Path, mode: int) -> None:
        """``folder`` and its missing parents, each with ``mode`` (the root private)."""
        if folder.is_dir():
            return
        if folder == self.root:
            self.create()
            return
        self._make_folders(folder.parent, mode)
        with contextlib.suppress(FileExistsError):  # another thread made it
            folder.mkdir()
            os.chmod(folder, mode)  # exactly: the umask must not narrow a shared one

    def _write_temporary(
        self, name: str, path: Path, data: bytes | memoryview, *, durable: bool
    ) -> Path:
        parent = path.parent
        mode = self._new_file_mode()
        tmp = parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}-{threading.get_ident():x}"
        try:
            if parent not in self._known_dirs:
                self._make_folders(parent, modes.folder_mode(mode))
                self._known_dirs.add(parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:  # an interruption too: no temporary file stays
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not isinstance(exc, OSError):
                raise
            raise StorageError(f"writing {name}: {exc.strerror}", location=self.location) from None
        return tmp

    @staticmethod
    def _sync_dir(folder: Path) -> None:
        dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def exists(self, name: str) -> bool:
        path = self._path(name)
        return path.exists() or path in self._pending or path in self._flushing

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(name=name, location=self.location) from None

    def modified(self, name: str) -> float:
        try:
            return self._path(name).stat().st_mtime
        except FileNotFoundError:
            raise ObjectNotFound(name=name, location=self.location) from None

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        for name, st in self._stats(prefix):
            yield name, st.st_mtime

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, st in self._stats(prefix):
            yield name, st.st_size

    def _stats(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """Each object under ``prefix`` with its ``stat``, one ``scandir`` per folder."""
        folder = prefix.rpartition("/")[0]
        base = self.root / folder if folder else self.root
        for dirpath, dirnames, _ in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            with os.scandir(dirpath) as entries:
                for entry in entries:
                    if entry.name.startswith(TMP_PREFIX) or not entry.is_file(
                        follow_symlinks=False
                    ):
                        continue
                    name = entry.name if rel == "." else f"{rel}/{entry.name}"
                    if not name.startswith(prefix):
                        continue
                    try:
                        yield name, entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        base = self.root / folder if folder else self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                name = filename if rel == "." else f"{rel}/{filename}"
                if not filename.startswith(TMP_PREFIX) and name.startswith(prefix):
                    yield name

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def create(self) -> None:
        try:
            if not self.root.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                os.chmod(self.root, modes.folder_mode(modes.PRIVATE_FILE))
        except OSError as exc:
            raise StorageError(f"cannot create: {exc.strerror}", location=self.location) from None
