"""XFS through dissect.xfs: POSIX modes, owners, nanosecond times, symlinks.

dissect.xfs (pinned) reads superblocks, inodes, directories and symlinks soundly;
three gaps are closed here rather than trusted:

  extents       file data is mapped by our own walk of the inode's extent list or
                extent B+tree (bmbt), bounded in depth and blocks, never visiting a
                block twice; dissect's recursive walk has no such bounds.
  unwritten     an extent flagged unwritten (``fallocate``, a write not yet done)
                reads as zeros, as the kernel reads it; dissect would return the
                stale bytes on disk.
  directories   a directory must be no larger than the blocks it maps (dissect
                loops over every block its size claims) and use one-block
                directory blocks, as ``mkfs.xfs`` makes them by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO, Final

from dissect.util.stream import RunlistStream
from dissect.xfs import XFS
from dissect.xfs.c_xfs import c_xfs
from dissect.xfs.xfs import parse_fsblock

from blockvault.browse.filesystem import Entry, Filesystem, Kind, kind_of, without_dots

__all__ = ["XfsFilesystem"]

Node = Any  # dissect.xfs.INode (untyped library)

_EXTENT_SIZE: Final = 16  # xfs_bmbt_rec: two big-endian uint64
_BMBT_PTR: Final = 8
_BMBT_KEY: Final = 8
_BMDR_HEADER: Final = 4  # xfs_bmdr_block: level, numrecs (the root in the inode)
_MAX_BMBT_LEVELS: Final = 9  # XFS_BM_MAXLEVELS is 9 with 64-bit extent counts
_MAX_EXTENTS: Final = 1 << 22  # four million extents: a badly fragmented 16 GiB file
_DIRECTORIES_KEPT: Final = 8  # directory listings held for lookups (a path's parents)
_DIR_SPACE: Final = 32 << 30  # XFS_DIR2_SPACE_SIZE: data blocks live below 32 GiB

Extent = tuple[int, int, int, bool]  # file block, filesystem block, count, unwritten


class XfsFilesystem(Filesystem[Node]):
    posix = True

    def __init__(self, file: BinaryIO, fs_type: str = "xfs") -> None:
        self._fs = XFS(file)
        self.type = fs_type
        sb = self._fs.sb
        self._block = int(sb.sb_blocksize)
        self._agblklog = int(sb.sb_agblklog)
        self._agblocks = int(sb.sb_agblocks)
        self._dblocks = int(sb.sb_dblocks)
        self._crc = self._fs.version == 5
        self._names: dict[int, dict[str, Node]] = {}  # inode -> its entries, oldest first
        if sb.sb_dirblklog:
            raise NotImplementedError(
                f"directory blocks of {self._block << sb.sb_dirblklog} bytes "
                f"(mkfs.xfs -n size=); blockvault browses {self._block}-byte ones"
            )

    def _root(self) -> Node:
        return self._fs.root

    def _children(self, node: Node) -> Iterable[tuple[str, Node]]:
        if node.inode.di_format != c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_LOCAL:
            data_space = _DIR_SPACE // self._block
            data_blocks = max(
                (
                    min(first + count, data_space)
                    for first, _, count, _ in self._extents(node)
                    if first < data_space
                ),
                default=0,
            )
            if node.size > min(_DIR_SPACE, data_blocks * self._block):
                raise ValueError(f"directory of {node.size} bytes maps {data_blocks} blocks")
        return without_dots((child.filename, child) for child in node.iterdir())

    def _lookup(self, node: Node, name: str) -> Node | None:
        # Names in an XFS directory are hashed, not sorted; rather than read its hash
        # tree, keep the last few directories read as dicts: a path walks through its
        # parents each time, and a walk opens the files of one directory in turn.
        inum = int(node.inum)
        children = self._names.pop(inum, None)
        if children is None:
            children = {}
            for child_name, child in self._children(node):
                children.setdefault(child_name, child)
        self._names[inum] = children
        while len(self._names) > _DIRECTORIES_KEPT:
            del self._names[next(iter(self._names))]
        return children.get(name)

    def _kind(self, node: Node) -> Kind:
        return kind_of(int(node.inode.di_mode))

    def _entry(self, node: Node, path: str) -> Entry:
        inode = node.inode
        kind = self._kind(node)
        return Entry(
            path=path,
            kind=kind,
            size=0 if kind == "dir" else int(node.size),
            mode=int(inode.di_mode),
            uid=int(inode.di_uid),
            gid=int(inode.di_gid),
            mtime_ns=int(node.mtime_ns),
            atime_ns=int(node.atime_ns),
            target=self._link(node) if kind == "symlink" else None,
        )

    def _link(self, node: Node) -> str:
        return str(node.link)

    def _open(self, node: Node) -> BinaryIO:
        if node.inode.di_format == c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_LOCAL:
            stream: BinaryIO = node.open()
            return stream
        size = int(node.size)
        runs: list[tuple[int | None, int]] = []
        at = 0
        for first, block, count, unwritten in sorted(self._extents(node)):
            if first < at:
                raise ValueError(f"inode {node.inum}: extents overlap at file block {first}")
            if first > at:
                runs.append((None, first - at))
            runs.append((None if unwritten else self._linear(block, count), count))
            at = first + count
        blocks = -(-size // self._block)
        if at < blocks:
            runs.append((None, blocks - at))
        return RunlistStream(self._fs.fh, runs, size, self._block)  # type: ignore[no-any-return]

    # --- the data fork's extents, bounded --------------------------------------------
    def _linear(self, fsblock: int, count: int) -> int:
        """A filesystem block number (AG number and AG block in separate bit fields)
        as a block offset from the start, checked to lie inside the filesystem."""
        agno, agbno = fsblock >> self._agblklog, fsblock & ((1 << self._agblklog) - 1)
        block = agno * self._agblocks + agbno
        if agbno >= self._agblocks or block + count > self._dblocks:
            raise ValueError(
                f"extent of {count} blocks at block {fsblock} is outside the filesystem"
            )
        return block

    def _extents(self, node: Node) -> list[Extent]:
        inode = node.inode
        fork = node.datafork()
        if inode.di_format == c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_EXTENTS:
            count = int(node.data_extents)
            data = fork.read(count * _EXTENT_SIZE)
            if len(data) != count * _EXTENT_SIZE:
                raise ValueError(f"inode {node.inum} claims {count} extents, more than it holds")
            return _records(data)
        if inode.di_format == c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_BTREE:
            return self._bmbt(node, fork)
        raise ValueError(f"inode {node.inum} has data fork format {int(inode.di_format)}")

    def _bmbt(self, node: Node, fork: BinaryIO) -> list[Extent]:
        """The leaves of an extent B+tree whose root sits in the inode, level by level."""
        root = fork.read()
        level, numrecs = int.from_bytes(root[:2], "big"), int.from_bytes(root[2:4], "big")
        fanout = (len(root) - _BMDR_HEADER) // (_BMBT_KEY + _BMBT_PTR)
        if not 1 <= level <= _MAX_BMBT_LEVELS or numrecs > fanout:
            raise ValueError(f"inode {node.inum}: extent tree of level {level}, {numrecs} records")
        at = _BMDR_HEADER + fanout * _BMBT_KEY
        pointers = _pointers(root, at, numrecs)
        header = len(c_xfs.xfs_btree_lblock_crc if self._crc else c_xfs.xfs_btree_lblock)
        magic = c_xfs.XFS_BMAP_CRC_MAGIC if self._crc else c_xfs.XFS_BMAP_MAGIC
        seen: set[int] = set()
        extents: list[Extent] = []
        for expected in range(level - 1, -1, -1):
            below: list[int] = []
            for pointer in pointers:
                block = self._linear(pointer, 1)
                if block in seen or len(seen) >= _MAX_EXTENTS:
                    raise ValueError(f"inode {node.inum}: extent tree visits block {block} twice")
                seen.add(block)
                self._fs.fh.seek(block * self._block)
                data = self._fs.fh.read(self._block)
                head = c_xfs.xfs_btree_lblock(data[: len(c_xfs.xfs_btree_lblock)])
                count = int(head.bb_numrecs)
                width = _EXTENT_SIZE if expected == 0 else _BMBT_KEY + _BMBT_PTR
                limit = (self._block - header) // width
                if head.bb_magic != magic or head.bb_level != expected or count > limit:
                    raise ValueError(f"inode {node.inum}: extent tree block {block} is damaged")
                if expected == 0:
                    extents += _records(data[header : header + count * _EXTENT_SIZE])
                    if len(extents) > _MAX_EXTENTS:
                        raise ValueError(f"inode {node.inum} has over {_MAX_EXTENTS} extents")
                else:
                    below += _pointers(data, header + limit * _BMBT_KEY, count)
            pointers = below
        return extents


def _pointers(data: bytes, at: int, count: int) -> list[int]:
    return [int.from_bytes(data[at + i * 8 : at + i * 8 + 8], "big") for i in range(count)]


def _records(data: bytes) -> list[Extent]:
    """Packed ``xfs_bmbt_rec``s (flag, file offset, block, count), decoded by dissect."""
    out = []
    for at in range(0, len(data), _EXTENT_SIZE):
        first, block, count, flag = parse_fsblock(data[at : at + _EXTENT_SIZE])
        out.append((first, block, count, bool(flag)))
    return out
