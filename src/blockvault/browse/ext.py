"""ext2/3/4 through dissect.extfs: POSIX modes, owners, nanosecond times, symlinks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

from dissect.extfs import ExtFS
from dissect.extfs.c_ext import c_ext

from blockvault.browse.filesystem import Entry, Filesystem, Kind, kind_of, without_dots

__all__ = ["ExtFilesystem"]

Node = Any  # dissect.extfs.INode (untyped library)


class ExtFilesystem(Filesystem[Node]):
    posix = True

    def __init__(self, file: BinaryIO, fs_type: str = "ext4") -> None:
        self._fs = ExtFS(file)
        self.type = fs_type

    def _root(self) -> Node:
        return self._fs.root

    def _children(self, node: Node) -> Iterable[tuple[str, Node]]:
        return without_dots((child.filename, child) for child in node.iterdir())

    def _kind(self, node: Node) -> Kind:
        return kind_of(int(node.inode.i_mode))

    def _entry(self, node: Node, path: str) -> Entry:
        inode = node.inode
        kind = self._kind(node)
        return Entry(
            path=path,
            kind=kind,
            size=0 if kind == "dir" else int(node.size),
            mode=int(inode.i_mode),
            uid=int(inode.i_uid) | int(inode.i_uid_high) << 16,
            gid=int(inode.i_gid) | int(inode.i_gid_high) << 16,
            mtime_ns=int(node.mtime_ns),
            atime_ns=int(node.atime_ns),
            target=self._link(node) if kind == "symlink" else None,
        )

    def _link(self, node: Node) -> str:
        return str(node.link)

    def _open(self, node: Node) -> BinaryIO:
        if node.inode.i_flags & c_ext.EXT4_INLINE_DATA_FL and node.size > 60:
            # dissect reads only the 60 bytes in i_block; the rest is in an xattr
            raise NotImplementedError("ext4 inline data larger than 60 bytes")
        stream: BinaryIO = node.open()
        return stream
