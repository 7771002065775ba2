"""One shape for every filesystem browse can read: entries, listings, contents.

Each parser (``ext``, ``fat``, ``ntfs`` modules) wraps a third-party library's
node type behind :class:`Filesystem`; path lookup, symlink following and walks
are written once, here. Paths are POSIX, absolute inside the filesystem (``/`` is
its root). Filesystems without POSIX metadata (FAT, NTFS) report synthesized
modes (``posix`` is False) and no owner.
"""

from __future__ import annotations

import errno
import posixpath
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, Generic, Literal, TypeVar

__all__ = [
    "Entry",
    "Filesystem",
    "Kind",
    "NotFound",
    "kind_of",
    "normalize",
    "synthesized_mode",
    "without_dots",
]

Kind = Literal["file", "dir", "symlink", "other"]
N = TypeVar("N")
_MAX_LINKS: Final = 40  # as the kernel's ELOOP limit
_MAX_DEPTH: Final = 256  # a directory linked into itself must not walk forever


class NotFound(Exception):
    """A path component is missing (``missing``), or not what was asked for: ``errno``
    says which (``ENOENT``, ``ENOTDIR``, ``ELOOP``, ...), for FUSE to answer with."""

    def __init__(
        self, missing: str, detail: str = "does not exist", code: int = errno.ENOENT
    ) -> None:
        super().__init__(f"{missing} {detail}")
        self.missing = missing
        self.detail = detail
        self.errno = code


@dataclass(frozen=True)
class Entry:
    path: str  # absolute inside the filesystem
    kind: Kind
    size: int  # bytes of content; 0 for directories
    mode: int  # st_mode: type and permission bits (synthesized where not stored)
    uid: int | None
    gid: int | None
    mtime_ns: int
    atime_ns: int | None
    target: str | None = None  # symlink target

    @property
    def name(self) -> str:
        return posixpath.basename(self.path) or "/"


def normalize(path: str) -> str:
    """``a//b/./c/`` -> ``/a/b/c``; ``..`` is resolved lexically and stops at the root."""
    return posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")


class Filesystem(ABC, Generic[N]):
    """A read-only filesystem. Not thread-safe: parsers share one file position."""

    type: str = ""
    posix: bool = False  # modes, owners and symlinks are stored, not synthesized
    separators: str = "/"  # characters that cannot be part of a name where it was written

    # --- what each parser provides -------------------------------------------------
    @abstractmethod
    def _root(self) -> N: ...

    @abstractmethod
    def _children(self, node: N) -> Iterable[tuple[str, N]]:
        """The entries of directory ``node`` without ``.`` and ``..``."""

    @abstractmethod
    def _kind(self, node: N) -> Kind: ...

    @abstractmethod
    def _entry(self, node: N, path: str) -> Entry: ...

    @abstractmethod
    def _open(self, node: N) -> BinaryIO: ...

    def _lookup(self, node: N, name: str) -> N | None:
        return next(
            (child for child_name, child in self._children(node) if child_name == name), None
        )

    def _link(self, node: N) -> str:
        return self._entry(node, "/").target or ""

    # --- path resolution -----------------------------------------------------------
    def _resolve(self, path: str, follow: bool) -> tuple[str, N]:
        path = normalize(path)
        links = 0
        node, here = self._root(), "/"
        parts = [p for p in path.split("/") if p]
        while parts:
            name = parts.pop(0)
            if name == "..":
                # lexical: parents of followed links are taken from the link's target
                here = posixpath.dirname(here)
                node = self._node_at(here)
                continue
            if self._kind(node) != "dir":
                raise NotFound(here, "is not a directory", errno.ENOTDIR)
            child = self._lookup(node, name)
            full = posixpath.join(here, name)
            if child is None:
                raise NotFound(full)
            if self._kind(child) == "symlink" and (parts or follow):
                links += 1
                if links > _MAX_LINKS:
                    raise NotFound(full, "is a loop of symbolic links", errno.ELOOP)
                target = self._link(child)
                base = "/" if target.startswith("/") else here
                rest = [p for p in target.split("/") if p and p != "."]
                parts = rest + parts
                node, here = self._node_at(base), base
                continue
            node, here = child, full
        return here, node

    def _node_at(self, path: str) -> N:
        node = self._root()
        for name in (p for p in path.split("/") if p):
            found = self._lookup(node, name)
            if found is None:
                raise NotFound(path)
            node = found
        return node

    # --- the interface -------------------------------------------------------------
    def entry(self, path: str, follow: bool = False) -> Entry:
        """The entry at ``path``; a final symlink is followed only with ``follow``."""
        where, node = self._resolve(path, follow)
        return self._entry(node, where)

    def listdir(self, path: str) -> list[Entry]:
        """The entries of directory ``path``, sorted by name (byte order)."""
        return [entry for _name, entry in self.children(path)]

    def children(self, path: str) -> list[tuple[str, Entry]]:
        """As :meth:`listdir`, each entry with its name exactly as stored (which may be
        hostile: hold ``/``, be ``..``; ``Entry.name`` cannot show that)."""
        where, node = self._resolve(path, True)
        if self._kind(node) != "dir":
            raise NotFound(where, "is not a directory", errno.ENOTDIR)
        return [
            (name, self._entry(child, _below(where, name)))
            for name, child in sorted(self._children(node), key=lambda pair: _order(pair[0]))
        ]

    def open(self, path: str) -> BinaryIO:
        """The content of the regular file at ``path`` (symlinks followed)."""
        where, node = self._resolve(path, True)
        kind = self._kind(node)
        if kind != "file":
            code = errno.EISDIR if kind == "dir" else errno.ENXIO
            raise NotFound(where, "is not a regular file", code)
        return self._open(node)

    def readlink(self, path: str) -> str:
        where, node = self._resolve(path, False)
        if self._kind(node) != "symlink":
            raise NotFound(where, "is not a symbolic link", errno.EINVAL)
        return self._link(node)

    def walk(self, path: str = "/") -> Iterator[Entry]:
        """``path`` itself, then everything under it, parents before children, in name
        order; symlinks to directories are not descended."""
        return (entry for _names, entry in self.walk_names(path))

    def walk_names(self, path: str = "/") -> Iterator[tuple[tuple[str, ...], Entry]]:
        """As :meth:`walk`, each entry with its names below ``path`` exactly as stored
        (``()`` for ``path`` itself): a hostile name may hold ``/``, be ``..`` or worse,
        which ``Entry.path`` cannot show; writers judge the names, not the path."""
        where, node = self._resolve(path, False)
        top = self._entry(node, where)
        yield (), top
        if top.kind == "dir":
            yield from self._walk(node, where, ())

    def _walk(
        self, node: N, where: str, names: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], Entry]]:
        if len(names) >= _MAX_DEPTH:
            raise NotFound(
                where, f"is nested deeper than {_MAX_DEPTH} directories (a loop?)", errno.ELOOP
            )
        for name, child in sorted(self._children(node), key=lambda pair: _order(pair[0])):
            entry = self._entry(child, _below(where, name))
            yield (*names, name), entry
            if entry.kind == "dir" and name not in (".", ".."):
                yield from self._walk(child, entry.path, (*names, name))


def _below(where: str, name: str) -> str:
    """The path of ``name`` in directory ``where``; not posixpath.join, which would
    drop ``where`` for a (hostile) name starting with ``/``."""
    return where.rstrip("/") + "/" + name


def _order(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def without_dots(children: Iterable[tuple[str, N]]) -> Iterator[tuple[str, N]]:
    """``children`` without the directory's own ``.`` and ``..`` (the first of each, as
    ext and FAT store them first); a further entry so named is hostile and is kept,
    for writers to refuse and report."""
    seen: set[str] = set()
    for name, child in children:
        if name in (".", "..") and name not in seen:
            seen.add(name)
            continue
        yield name, child


def kind_of(mode: int) -> Kind:
    """The kind of an entry from its POSIX mode bits (what ext, XFS and btrfs store)."""
    return _KINDS.get(stat.S_IFMT(mode), "other")


_KINDS: dict[int, Kind] = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


def synthesized_mode(kind: Kind, read_only: bool = False) -> int:
    """The mode Linux shows for filesystems without POSIX permissions (umask 022)."""
    if kind == "dir":
        return stat.S_IFDIR | 0o755
    if kind == "symlink":
        return stat.S_IFLNK | 0o777
    return stat.S_IFREG | (0o444 if read_only else 0o644)
