"""A file snapshot's trees as a browsable filesystem, like a partition of a disk image.

``ls``, ``cat``, ``find``, ``extract`` and ``mount`` reach a file snapshot through the
same :class:`~blockvault.browse.volume.Volume` as a partition: a file snapshot is one
volume, numbered :data:`FILES_VOLUME` (0, which no partition table uses), and its
addresses read ``SNAPSHOT:/PATH``. Trees are read through ``files/trees.py``
(fetched, verified, parsed and bounded there); contents through :class:`ContentFile`,
which finds a slice by offset and keeps the last chunk it read.
"""

from __future__ import annotations

import bisect
import io
import stat
from collections.abc import Iterable
from typing import BinaryIO, Final, cast

from blockvault.browse.filesystem import Entry, Filesystem, Kind
from blockvault.errors import ObjectCorrupt
from blockvault.files.trees import BadTree, TreeSource, root_node, slice_of
from blockvault.repo.manifest import PartitionRecord, Snapshot
from blockvault.repo.repository import Repository
from blockvault.repo.tree import Node

__all__ = ["FILES_VOLUME", "ContentFile", "TreeFilesystem", "files_record"]

FILES_VOLUME: Final = 0
_TYPE_BITS: Final = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


def files_record(snapshot: Snapshot) -> PartitionRecord:
    """The one volume of a file snapshot, in the shape browse gives partitions."""
    return PartitionRecord(
        number=FILES_VOLUME,
        start=0,
        size=0,
        type="files",
        filesystem="files",
        used_bytes=snapshot.stats.used_bytes,
        imaged=True,
    )


class TreeFilesystem(Filesystem[Node]):
    """One file snapshot's trees, read-only. ``fetched`` counts objects read."""

    type = "files"
    posix = True

    def __init__(self, repo: Repository, snapshot: Snapshot, source: TreeSource | None = None):
        self.repo = repo
        self.snapshot = snapshot
        self.source = source or TreeSource(repo)
        self.contents = 0  # content chunks read

    @property
    def fetched(self) -> int:
        return self.source.fetched + self.contents

    def _root(self) -> Node:
        return root_node(self.snapshot)

    def _nodes(self, node: Node) -> tuple[Node, ...]:
        try:
            return self.source.nodes(node)
        except BadTree as exc:  # damage, exit 4, named by its object
            raise ObjectCorrupt(
                exc.detail, kind="tree", name=node.subtree[:12], repo=self.repo.location
            ) from None

    def _children(self, node: Node) -> Iterable[tuple[str, Node]]:
        return [(child.name, child) for child in self._nodes(node)]

    def _lookup(self, node: Node, name: str) -> Node | None:
        return next((child for child in self._nodes(node) if child.name == name), None)

    def _kind(self, node: Node) -> Kind:
        return cast(Kind, node.kind) if node.kind in ("file", "dir", "symlink") else "other"

    def _entry(self, node: Node, path: str) -> Entry:
        return Entry(
            path=path,
            kind=self._kind(node),
            size=node.size if node.kind == "file" else len(node.target.encode(errors="replace")),
            mode=_TYPE_BITS[node.kind] | node.mode,
            uid=node.uid,
            gid=node.gid,
            mtime_ns=node.mtime_ns,
            atime_ns=node.atime_ns,
            target=node.target if node.kind == "symlink" else None,
        )

    def _open(self, node: Node) -> BinaryIO:
        return cast(BinaryIO, io.BufferedReader(ContentFile(self, node), 1 << 20))

    def chunk(self, chunk_id: str) -> bytes:
        self.contents += 1
        return self.repo.get_chunk(chunk_id)


class ContentFile(io.RawIOBase):
    """A file node's content, seekable: holes read as zeros, slices from their chunks."""

    def __init__(self, fs: TreeFilesystem, node: Node) -> None:
        self.fs = fs
        self.node = node
        self.starts: list[int] = []
        at = 0
        for piece in node.content:
            self.starts.append(at)
            at += piece.length
        self.size = at
        self.pos = 0
        self._chunk: tuple[str, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.pos >= self.size or not len(buffer):
            return 0
        k = bisect.bisect_right(self.starts, self.pos) - 1
        piece = self.node.content[k]
        inside = self.pos - self.starts[k]
        n = min(len(buffer), piece.length - inside)
        if piece.chunk_id is None:
            buffer[:n] = bytes(n)
        else:
            data = slice_of(self._data(piece.chunk_id), piece, self.node, self.fs.repo)
            buffer[:n] = data[inside : inside + n]
        self.pos += n
        return n

    def _data(self, chunk_id: str) -> bytes:
        if self._chunk is None or self._chunk[0] != chunk_id:
            self._chunk = (chunk_id, self.fs.chunk(chunk_id))
        return self._chunk[1]
