"""btrfs through dissect.btrfs, shown the way the kernel shows it mounted.

The root is the default subvolume (what ``mount`` without ``subvol=`` shows). Other
subvolumes appear as directories where they are linked, as when mounted. A
directory entry that names a subvolume without the root tree's matching
ROOT_REF (``(parent, ROOT_REF, child)`` with the same directory and name) is shown
as an empty directory, as the kernel does: that is how a snapshot shows the
subvolumes nested in what it copied, which it does not contain.

dissect's B-tree cursor follows child pointers without checking levels, so a
hostile image with a node pointing at itself would walk forever: the cursor is
replaced by one that refuses a child whose level is not one less than its
parent's, which bounds every descent at eight levels.
"""

from __future__ import annotations

import io
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from dissect.btrfs import Btrfs
from dissect.btrfs import tree as dissect_tree
from dissect.btrfs.exceptions import Error as DissectError

from blockvault.browse.filesystem import Entry, Filesystem, Kind, kind_of, without_dots

__all__ = ["BtrfsFilesystem"]

_MAX_LEVEL: Final = 8  # BTRFS_MAX_LEVEL
_ROOT_REF_KEY: Final = 156
_ROOT_REF: Final = struct.Struct("<QQH")  # dirid, sequence, name_len; the name follows


class _LevelCheckedCursor(dissect_tree.Cursor):  # type: ignore[misc]
    def push(self, address: int, initial_index: int = 0) -> None:
        parent = self._header.level if self._header is not None else None
        super().push(address, initial_index)
        depth_ok = len(self._path) <= _MAX_LEVEL + 1
        if not depth_ok or (parent is not None and self._header.level != parent - 1):
            raise DissectError(f"tree node {address} has level {self._header.level} below {parent}")


dissect_tree.Cursor = _LevelCheckedCursor

Node = Any  # dissect.btrfs INode, or an _EmptySubvolume


@dataclass(frozen=True)
class _EmptySubvolume:
    """The empty directory the kernel shows for a subvolume a snapshot did not copy."""

    like: Any  # the directory holding it: its owner and times are shown


class BtrfsFilesystem(Filesystem[Node]):
    posix = True

    def __init__(self, file: BinaryIO, fs_type: str = "btrfs") -> None:
        self._fs = Btrfs(file)
        self.type = fs_type

    def _root(self) -> Node:
        return self._fs.root

    def _children(self, node: Node) -> Iterable[tuple[str, Node]]:
        if isinstance(node, _EmptySubvolume):
            return
        for name, child in without_dots(node.iterdir()):
            if child.subvolume.objectid != node.subvolume.objectid and not self._linked(
                node, name, child
            ):
                yield name, _EmptySubvolume(node)
            else:
                yield name, child

    def _linked(self, parent: Node, name: str, child: Node) -> bool:
        """Whether the root tree links subvolume ``child`` at ``parent``/``name``."""
        tree = self._fs._root_tree
        try:
            _item, data = tree.find(
                parent.subvolume.objectid, _ROOT_REF_KEY, child.subvolume.objectid
            )
        except KeyError:
            return False
        dirid, _sequence, length = _ROOT_REF.unpack_from(data)
        stored = bytes(data[_ROOT_REF.size : _ROOT_REF.size + length])
        return bool(dirid == parent.inum and stored == name.encode("utf-8", "surrogateescape"))

    def _kind(self, node: Node) -> Kind:
        if isinstance(node, _EmptySubvolume):
            return "dir"
        return kind_of(int(node.mode))

    def _entry(self, node: Node, path: str) -> Entry:
        if isinstance(node, _EmptySubvolume):
            like = node.like
            return Entry(
                path, "dir", 0, stat.S_IFDIR | 0o755, int(like.uid), int(like.gid),
                int(like.mtime_ns), int(like.atime_ns),
            )  # fmt: skip
        kind = self._kind(node)
        return Entry(
            path=path,
            kind=kind,
            size=0 if kind == "dir" else int(node.size),
            mode=int(node.mode),
            uid=int(node.uid),
            gid=int(node.gid),
            mtime_ns=int(node.mtime_ns),
            atime_ns=int(node.atime_ns),
            target=self._link(node) if kind == "symlink" else None,
        )

    def _link(self, node: Node) -> str:
        return str(node.link)

    def _open(self, node: Node) -> BinaryIO:
        if isinstance(node, _EmptySubvolume):
            return io.BytesIO()
        stream: BinaryIO = node.open()
        return stream
