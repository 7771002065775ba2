"""btrfs: the bytes of one device that the filesystem uses, from its chunk and extent trees.

btrfs addresses everything by *logical* byte number; chunks map logical ranges to
*physical* stripes on the devices. The map is built in three steps:

1. the superblock's ``sys_chunk_array`` holds the SYSTEM chunks, enough to read
   the chunk tree, whose CHUNK_ITEMs map every other logical range;
2. the root tree names the extent tree, whose EXTENT_ITEM (data, and fat metadata)
   and METADATA_ITEM (skinny metadata, one node each) records are everything
   allocated; a block group with none of them is free;
3. each allocated logical range is mapped through its chunk to every physical
   copy: DUP metadata has two on the same device, and both are used.

Add the superblock and its mirrors (64 KiB, 64 MiB, 256 GiB) and the boot area
before the first one. A tree log awaiting replay (the filesystem was not cleanly
unmounted) references blocks the extent tree does not know yet, so then every
allocated chunk is kept whole. A filesystem spanning several devices, or
newer layouts we do not read (extent tree v2, RAID stripe tree), is imaged
raw with a note.

The image may be hostile: every node is checked (checksum, its own address,
fsid, level one less than its parent, item bounds) before it is read, each node
is visited once, and the total is bounded by the metadata the chunks can hold.
Anything inconsistent raises ``FilesystemError``.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import xxhash
from dissect.util.hash import crc32c

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.fs.c_btrfs import (
    BLOCK_GROUP_MIRRORED,
    BLOCK_GROUP_RAID0,
    BLOCK_GROUP_RAID5,
    BLOCK_GROUP_RAID6,
    BLOCK_GROUP_RAID10,
    CHUNK_ITEM_KEY,
    CSUM_TYPES,
    EXTENT_ITEM_KEY,
    EXTENT_TREE_OBJECTID,
    MAGIC,
    MAX_LEVEL,
    METADATA_ITEM_KEY,
    ROOT_ITEM_KEY,
    SUPER_INFO_OFFSET,
    SUPER_INFO_SIZE,
    SUPER_MIRROR_SHIFT,
    SYS_CHUNK_ARRAY_SIZE,
    c_btrfs,
)
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap

__all__ = ["detect", "read"]

_HEADER: Final = len(c_btrfs.btrfs_header)  # 101
_KEY: Final = len(c_btrfs.btrfs_disk_key)  # 17
_ITEM: Final = len(c_btrfs.btrfs_item)  # 25
_KEY_PTR: Final = len(c_btrfs.btrfs_key_ptr)  # 33
_CHUNK: Final = len(c_btrfs.btrfs_chunk)  # 48
_STRIPE: Final = len(c_btrfs.btrfs_stripe)  # 32
_ROOT_ITEM: Final = len(c_btrfs.btrfs_root_item)
_MAGIC_AT: Final = SUPER_INFO_OFFSET + 64  # csum, fsid, bytenr, flags come first
_INCOMPAT_METADATA_UUID: Final = 1 << 10
_INCOMPAT_UNREAD: Final = {1 << 13: "extent tree v2", 1 << 14: "RAID stripe tree"}
_SECTOR_SIZES: Final = (4096, 8192, 16384, 32768, 65536)
_MAX_STRIPES: Final = 256  # a chunk item is at most a node long; no sane array is wider


def detect(reader: Reader) -> bool:
    if reader.size < SUPER_INFO_OFFSET + SUPER_INFO_SIZE:
        return False
    return reader.read_at(_MAGIC_AT, len(MAGIC)) == MAGIC


def read(reader: Reader) -> FilesystemInfo:
    """The bytes of ``reader`` (one btrfs device) that the filesystem uses."""
    return _Btrfs(reader).info()


def _fail(detail: str, where: str = "superblock") -> FilesystemError:
    return FilesystemError(detail, fs="btrfs", where=where)


# --- checksums --------------------------------------------------------------------


def _crc32c(data: bytes) -> bytes:
    return struct.pack("<I", crc32c.crc32c(data))


def _xxh64(data: bytes) -> bytes:
    return struct.pack("<Q", xxhash.xxh64_intdigest(data))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _blake2b(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


_CHECKSUMS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "crc32c": _crc32c,
    "xxhash64": _xxh64,
    "sha256": _sha256,
    "blake2b": _blake2b,
}


# --- chunks: logical -> physical --------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    logical: int
    length: int
    type: int
    stripes: tuple[int, ...]  # physical start of each stripe on this device
    stripe_size: int  # bytes each stripe occupies on the device

    @property
    def end(self) -> int:
        return self.logical + self.length

    @property
    def mirrored(self) -> bool:
        """Every stripe holds the whole chunk (single, DUP, RAID1*)."""
        return len(self.stripes) == 1 or bool(self.type & BLOCK_GROUP_MIRRORED)

    def physical(self, logical: int, length: int) -> Iterator[tuple[int, int]]:
        """Every device range holding ``[logical, logical + length)``: each copy of a
        mirrored chunk; for striped profiles (never made on one device by the tools,
        but an image may say so) the whole of every stripe."""
        if self.mirrored:
            for stripe in self.stripes:
                yield stripe + logical - self.logical, length
        else:
            for stripe in self.stripes:
                yield stripe, self.stripe_size

    def whole(self) -> Iterator[tuple[int, int]]:
        for stripe in self.stripes:
            yield stripe, self.stripe_size


def _stripe_size(length: int, kind: int, count: int, sub_stripes: int) -> int:
    """Bytes one stripe of a chunk occupies on its device (``calc_stripe_length``)."""
    if kind & BLOCK_GROUP_MIRRORED or count == 1:
        data = 1
    elif kind & BLOCK_GROUP_RAID10:
        data = count // max(sub_stripes, 1)
    elif kind & BLOCK_GROUP_RAID5:
        data = count - 1
    elif kind & BLOCK_GROUP_RAID6:
        data = count - 2
    elif kind & BLOCK_GROUP_RAID0:
        data = count
    else:
        data = 1
    if data < 1:
        raise _fail(f"a chunk of type {kind:#x} with {count} stripes holds no data", "chunk tree")
    return -(-length // data)


class _Chunks:
    """The chunk map: sorted, non-overlapping logical ranges."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.chunks: list[_Chunk] = []

    def add(self, chunk: _Chunk) -> None:
        i = bisect.bisect_right(self.starts, chunk.logical)
        if i and self.chunks[i - 1].logical == chunk.logical and self.chunks[i - 1] == chunk:
            return  # SYSTEM chunks are in both the superblock and the chunk tree
        if (i and self.chunks[i - 1].end > chunk.logical) or (
            i < len(self.chunks) and chunk.end > self.chunks[i].logical
        ):
            raise _fail(f"chunk at logical {chunk.logical} overlaps another", "chunk tree")
        self.starts.insert(i, chunk.logical)
        self.chunks.insert(i, chunk)

    def find(self, logical: int, length: int) -> _Chunk:
        i = bisect.bisect_right(self.starts, logical) - 1
        if i < 0 or logical + length > self.chunks[i].end:
            raise _fail(f"logical range {logical}+{length} lies in no chunk", "extent tree")
        return self.chunks[i]

    def __iter__(self) -> Iterator[_Chunk]:
        return iter(self.chunks)


# --- the filesystem ---------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    level: int
    nritems: int
    data: bytes  # the whole node

    def items(self) -> Iterator[tuple[Any, bytes]]:
        """A leaf's items: (key, item data), every data range checked to lie in the node."""
        for i in range(self.nritems):
            at = _HEADER + i * _ITEM
            objectid, kind, offset, data_at, size = struct.unpack_from("<QBQII", self.data, at)
            start = _HEADER + data_at
            if start < _HEADER + self.nritems * _ITEM or start + size > len(self.data):
                raise _fail(f"item {i} has its data outside the node", "tree node")
            yield (objectid, kind, offset), self.data[start : start + size]

    def children(self) -> Iterator[int]:
        for i in range(self.nritems):
            yield struct.unpack_from("<Q", self.data, _HEADER + i * _KEY_PTR + _KEY)[0]


class _Btrfs:
    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        if not detect(reader):
            raise _fail("no _BHRfS_M magic at 64 KiB")
        raw = reader.read_at(SUPER_INFO_OFFSET, SUPER_INFO_SIZE)
        self.sb: Any = c_btrfs.btrfs_super_block(raw)
        sb = self.sb
        name, self.csum_size = CSUM_TYPES.get(sb.csum_type, ("", 0))
        if not name:
            raise _fail(f"checksum type {sb.csum_type} is not one btrfs defines")
        self.checksum = _CHECKSUMS[name]
        if self.checksum(raw[32:])[: self.csum_size] != bytes(sb.csum)[: self.csum_size]:
            raise _fail(f"the superblock's {name} checksum does not match")
        if sb.sectorsize not in _SECTOR_SIZES:
            raise _fail(f"sector size {sb.sectorsize} is not one btrfs uses")
        if sb.nodesize not in _SECTOR_SIZES or sb.nodesize < sb.sectorsize:
            raise _fail(f"node size {sb.nodesize} is not one btrfs uses")
        if sb.sys_chunk_array_size > SYS_CHUNK_ARRAY_SIZE:
            raise _fail(f"sys_chunk_array_size {sb.sys_chunk_array_size} exceeds 2048")
        self.size = int(sb.dev_item.total_bytes)
        self.nodesize = int(sb.nodesize)
        self.devid = int(sb.dev_item.devid)
        meta = sb.incompat_flags & _INCOMPAT_METADATA_UUID
        self.fsid = bytes(sb.metadata_uuid if meta else sb.fsid)
        self.chunks = _Chunks()
        self.nodes: list[tuple[int, int]] = []  # physical ranges of every node read
        self.budget = 0  # nodes that may still be read

    # --- reading checked nodes ----------------------------------------------------
    def _node(self, logical: int, level: int) -> _Node:
        """The node at ``logical``, from the first copy that passes every check."""
        if self.budget <= 0:
            raise _fail("more tree nodes than the metadata chunks can hold", "tree node")
        self.budget -= 1
        chunk = self.chunks.find(logical, self.nodesize)
        copies = list(chunk.physical(logical, self.nodesize)) if chunk.mirrored else []
        if not copies:
            raise _fail(f"tree node {logical} lies in a striped chunk", "tree node")
        problem = ""
        for physical, length in copies:
            if physical + length > self.reader.size:
                problem = f"lies at {physical}, past the end of the device"
                continue
            data = self.reader.read_at(physical, length)
            header = c_btrfs.btrfs_header(data)
            problem = self._check(data, header, logical, level)
            if not problem:
                self.nodes.extend(copies)
                return _Node(int(header.level), int(header.nritems), data)
        raise _fail(f"tree node at logical {logical} {problem}", "tree node")

    def _check(self, data: bytes, header: Any, logical: int, level: int) -> str:
        if self.checksum(data[32:])[: self.csum_size] != bytes(header.csum)[: self.csum_size]:
            return "fails its checksum"
        if header.bytenr != logical:
            return f"says it is at {header.bytenr}"
        if bytes(header.fsid) != self.fsid:
            return "belongs to another filesystem"
        if header.level != level:
            return f"has level {header.level}, expected {level}"
        size = _ITEM if level == 0 else _KEY_PTR
        if header.nritems > (self.nodesize - _HEADER) // size:
            return f"claims {header.nritems} items"
        return ""

    def _leaves(self, root: int, level: int) -> Iterator[_Node]:
        """Every leaf of the tree rooted at ``root``, each node read once."""
        if level > MAX_LEVEL:
            raise _fail(f"a tree of level {level} (at most {MAX_LEVEL})", "tree node")
        seen: set[int] = set()
        stack = [(root, level)]
        while stack:
            logical, lvl = stack.pop()
            if logical in seen:
                continue
            seen.add(logical)
            node = self._node(logical, lvl)
            if lvl == 0:
                yield node
            else:
                stack.extend((child, lvl - 1) for child in reversed(list(node.children())))

    # --- the chunk map ------------------------------------------------------------
    def _chunk(self, logical: int, data: bytes) -> _Chunk:
        if len(data) < _CHUNK:
            raise _fail(f"chunk item at logical {logical} is truncated", "chunk tree")
        chunk = c_btrfs.btrfs_chunk(data)
        count = int(chunk.num_stripes)
        if not 1 <= count <= _MAX_STRIPES or len(data) < _CHUNK + count * _STRIPE:
            raise _fail(f"chunk at logical {logical} has {count} stripes", "chunk tree")
        length = int(chunk.length)
        if length <= 0 or length % self.sb.sectorsize or logical % self.sb.sectorsize:
            raise _fail(f"chunk at logical {logical} of {length} bytes is misaligned", "chunk tree")
        stripe_size = _stripe_size(length, int(chunk.type), count, int(chunk.sub_stripes))
        stripes = []
        for i in range(count):
            devid, offset = struct.unpack_from("<QQ", data, _CHUNK + i * _STRIPE)
            if devid != self.devid:
                raise _fail(f"chunk at logical {logical} has a stripe on device {devid}")
            if offset + stripe_size > self.size:
                raise _fail(f"chunk at logical {logical} lies past the device's end", "chunk tree")
            stripes.append(offset)
        return _Chunk(logical, length, int(chunk.type), tuple(stripes), stripe_size)

    def _read_chunks(self) -> None:
        array = bytes(self.sb.sys_chunk_array)[: self.sb.sys_chunk_array_size]
        at = 0
        while at < len(array):
            if at + _KEY + _CHUNK > len(array):
                raise _fail("sys_chunk_array ends inside an item")
            _objectid, kind, logical = struct.unpack_from("<QBQ", array, at)
            if kind != CHUNK_ITEM_KEY:
                raise _fail(f"sys_chunk_array holds an item of type {kind}")
            count = struct.unpack_from("<H", array, at + _KEY + 44)[0]
            end = at + _KEY + _CHUNK + count * _STRIPE
            self.chunks.add(self._chunk(logical, array[at + _KEY : end]))
            at = end
        self.budget = self._max_nodes()
        for leaf in self._leaves(self.sb.chunk_root, self.sb.chunk_root_level):
            for (_objectid, kind, logical), data in leaf.items():
                if kind == CHUNK_ITEM_KEY:
                    self.chunks.add(self._chunk(logical, data))
        self.budget = self._max_nodes()  # again, for the root and extent trees

    def _max_nodes(self) -> int:
        return sum(c.length for c in self.chunks) // self.nodesize + 1

    # --- the extent tree ----------------------------------------------------------
    def _extent_root(self) -> tuple[int, int]:
        for leaf in self._leaves(self.sb.root, self.sb.root_level):
            for (objectid, kind, _offset), data in leaf.items():
                if objectid == EXTENT_TREE_OBJECTID and kind == ROOT_ITEM_KEY:
                    if len(data) < _ROOT_ITEM:
                        raise _fail("the extent tree's root item is truncated", "root tree")
                    item = c_btrfs.btrfs_root_item(data)
                    return int(item.bytenr), int(item.level)
        raise _fail("the root tree names no extent tree", "root tree")

    def _allocated(self) -> Iterator[tuple[int, int]]:
        """Logical ranges of every extent the extent tree records."""
        root, level = self._extent_root()
        for leaf in self._leaves(root, level):
            for (objectid, kind, offset), _data in leaf.items():
                if kind == EXTENT_ITEM_KEY:
                    yield objectid, offset
                elif kind == METADATA_ITEM_KEY:
                    yield objectid, self.nodesize

    # --- the map ------------------------------------------------------------------
    def _fixed(self) -> list[tuple[int, int]]:
        """The boot area and every superblock copy that fits."""
        used = [(0, SUPER_INFO_OFFSET + SUPER_INFO_SIZE)]
        for i in range(1, 3):
            at = 16 * 1024 << (SUPER_MIRROR_SHIFT * i)
            if at + SUPER_INFO_SIZE <= self.size:
                used.append((at, SUPER_INFO_SIZE))
        return used

    def info(self) -> FilesystemInfo:
        sb = self.sb
        label = bytes(sb.label).split(b"\0", 1)[0].decode("utf-8", "replace") or None
        fsid = str(uuid.UUID(bytes=bytes(sb.fsid)))
        note = None
        if sb.num_devices != 1:
            note = f"one device of a {sb.num_devices}-device btrfs filesystem, imaged raw"
        unread = [name for bit, name in _INCOMPAT_UNREAD.items() if sb.incompat_flags & bit]
        if unread:
            note = f"btrfs with {', '.join(unread)} (not read here), imaged raw"
        if self.size > self.reader.size or self.size < SUPER_INFO_OFFSET + SUPER_INFO_SIZE:
            raise _fail(f"the device is {self.size} bytes, its partition {self.reader.size}")
        if note:
            used = ExtentMap.span(0, self.reader.size)
            return FilesystemInfo("btrfs", self.reader.size, sb.sectorsize, used, label, fsid, note)
        self._read_chunks()
        ranges = self._fixed() + self.nodes
        if sb.log_root:
            note = "a tree log awaits replay (not cleanly unmounted): all allocated chunks kept"
            for chunk in self.chunks:
                ranges.extend(chunk.whole())
        else:
            for logical, length in self._allocated():
                if length <= 0:
                    raise _fail(f"extent at logical {logical} has length {length}", "extent tree")
                ranges.extend(self.chunks.find(logical, length).physical(logical, length))
        used = ExtentMap(ranges).align_out(sb.sectorsize).clip(0, self.size)
        return FilesystemInfo("btrfs", self.size, sb.sectorsize, used, label, fsid, note)
