"""Objects as files in a local directory (the default repository location)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from blockvault.errors import ObjectNotFound, StorageError
from blockvault.storage.backend import Backend, Capabilities

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Each object is a file; writes go to a temporary file, fsync, rename, fsync dir."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.location = str(self.root)
        self.capabilities = Capabilities(local_path=str(self.root), parallel_io=4)
        self._known_dirs: set[Path] = set()

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise StorageError(f"invalid object name {name!r}", location=self.location)
        return self.root / name

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(name=name, location=self.location) from None
        except OSError as exc:
            raise StorageError(f"reading {name}: {exc.strerror}", location=self.location) from None

    def write(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        parent = path.parent
        if parent not in self._known_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(parent)
        tmp = parent / f".tmp-{path.name}-{os.getpid()}-{id(data):x}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            dirfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"writing {name}: {exc.strerror}", location=self.location) from None

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

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
        folder = prefix.rpartition("/")[0]
        base = self.root / folder if folder else self.root
        for dirpath, dirnames, _ in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            with os.scandir(dirpath) as entries:
                for entry in entries:
                    if entry.name.startswith(".tmp-") or not entry.is_file(follow_symlinks=False):
                        continue
                    name = entry.name if rel == "." else f"{rel}/{entry.name}"
                    if not name.startswith(prefix):
                        continue
                    try:
                        yield name, entry.stat(follow_symlinks=False).st_mtime
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
                if not filename.startswith(".tmp-") and name.startswith(prefix):
                    yield name

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create: {exc.strerror}", location=self.location) from None
