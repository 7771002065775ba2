"""XFS: the allocation map from the free-space B+trees of every allocation group.

An XFS filesystem is cut into allocation groups (AGs) of ``sb_agblocks`` blocks
(the last may be shorter). Each AG starts with four sectors: a copy of the
superblock, the AGF (free space), the AGI (inodes) and the AGFL (a small reserve
of free blocks). The AGF names the root and height of the ``bnobt``, a short-form
B+tree whose leaves list the AG's free extents ``(startblock, blockcount)`` in
block order. Everything else is in use: AG headers, B+tree blocks, inode chunks,
the internal log, file and directory blocks. So the map is the filesystem's span
less every free extent, less the blocks waiting on the AGFL (free blocks the
filesystem keeps aside for its own B+trees; partclone and ``xfs_copy`` skip them
too, and ``xfs_repair`` never reads them).

The structures are declared once by ``dissect.xfs`` (``c_xfs``), big-endian.
Everything read is bounded: the geometry against the device, each B+tree's height
and fan-out, every block it points to against its AG, and no block is visited
twice, so a hostile or corrupt tree raises ``FilesystemError`` in at most one read
per block of the AG. Version 5 (CRC) filesystems, as ``mkfs.xfs`` makes them, and
version 4 are read alike; only the B+tree block header differs. A realtime
subvolume or an external log lives on another device and is not part of this map.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from dissect.xfs.c_xfs import c_xfs

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap

__all__ = ["detect", "read", "sector_size"]

MAGIC: Final = b"XFSB"
MIN_AG_BLOCKS: Final = 64  # XFS_MIN_AG_BLOCKS: the kernel refuses smaller groups
MAX_BTREE_LEVELS: Final = 9  # XFS_BTREE_MAXLEVELS; a bnobt needs far fewer
AGF_VERSION: Final = 1
BNOBT_MAGICS: Final = {4: int(c_xfs.XFS_ABTB_MAGIC), 5: int(c_xfs.XFS_ABTB_CRC_MAGIC)}
AGFL_MAGIC: Final = int(c_xfs.XFS_AGFL_MAGIC)
AGFL_HEADER: Final = 36  # struct xfs_agfl of v5: magic, seqno, uuid, lsn, crc
REC_SIZE: Final = 8  # xfs_alloc_rec / xfs_alloc_key: two big-endian uint32
PTR_SIZE: Final = 4  # xfs_alloc_ptr_t: an AG block number


def detect(reader: Reader) -> bool:
    """The primary superblock's magic, as libblkid checks it."""
    return reader.size >= 512 and reader.read_at(0, len(MAGIC)) == MAGIC


def sector_size(reader: Reader) -> int:
    """The sector size the XFS on ``reader`` was made for (``sb_sectsize``): the kernel
    mounts it on no device whose logical sectors are larger."""
    return int(_superblock(reader).sb_sectsize)


def _fail(detail: str, where: str = "superblock") -> FilesystemError:
    return FilesystemError(f"{detail}; run xfs_repair -n to check it", fs="xfs", where=where)


def _power_of_two(value: int, low: int, high: int) -> bool:
    return low <= value <= high and value & (value - 1) == 0


def _superblock(reader: Reader) -> Any:
    sb = c_xfs.xfs_sb(reader.read_at(0, len(c_xfs.xfs_sb)))
    version = sb.sb_versionnum & c_xfs.XFS_SB_VERSION_NUMBITS
    if version not in BNOBT_MAGICS:
        raise _fail(f"version {version} (blockvault reads versions 4 and 5)")
    bs, sect = int(sb.sb_blocksize), int(sb.sb_sectsize)
    if not _power_of_two(bs, 512, 65536) or 1 << sb.sb_blocklog != bs:
        raise _fail(f"block size {bs} (log {sb.sb_blocklog})")
    if not _power_of_two(sect, 512, 32768) or sect > bs:
        raise _fail(f"sector size {sect} with {bs}-byte blocks")
    agblocks, agcount, dblocks = int(sb.sb_agblocks), int(sb.sb_agcount), int(sb.sb_dblocks)
    if agblocks < MIN_AG_BLOCKS or sb.sb_agblklog != (agblocks - 1).bit_length():
        raise _fail(f"allocation groups of {agblocks} blocks (log {sb.sb_agblklog})")
    if agcount < 1 or not (agcount - 1) * agblocks < dblocks <= agcount * agblocks:
        raise _fail(f"{agcount} allocation groups of {agblocks} blocks for {dblocks} blocks")
    if dblocks * bs > reader.size:
        raise _fail(
            f"{dblocks} blocks of {bs} bytes do not fit the {reader.size}-byte partition "
            "(truncated image?)"
        )
    if sb.sb_inprogress:
        raise _fail("mkfs.xfs did not finish (sb_inprogress is set)")
    return sb


def read(reader: Reader) -> FilesystemInfo:
    """Used bytes of the XFS on ``reader``: all of its blocks but the free ones."""
    if not detect(reader):
        raise _fail("no XFSB magic")
    sb = _superblock(reader)
    bs, agblocks, dblocks = int(sb.sb_blocksize), int(sb.sb_agblocks), int(sb.sb_dblocks)
    version = int(sb.sb_versionnum & c_xfs.XFS_SB_VERSION_NUMBITS)
    free: list[tuple[int, int]] = []
    for agno in range(int(sb.sb_agcount)):
        group = _Group(reader, sb, version, agno, min(agblocks, dblocks - agno * agblocks))
        base = agno * agblocks * bs
        free.extend((base + start * bs, count * bs) for start, count in group.free_extents())
    size = dblocks * bs
    label = bytes(sb.sb_fname).split(b"\0", 1)[0].decode("utf-8", "replace") or None
    raw_uuid = bytes(sb.sb_uuid)
    return FilesystemInfo(
        type="xfs",
        size=size,
        block_size=bs,
        used=ExtentMap.span(0, size).subtract(ExtentMap(free)),
        label=label,
        uuid=str(uuid.UUID(bytes=raw_uuid)) if any(raw_uuid) else None,
        note="realtime subvolume on another device, not imaged" if sb.sb_rblocks else None,
    )


class _Group:
    """One allocation group: its AGF, AGFL and free-space B+tree, each checked."""

    def __init__(self, reader: Reader, sb: Any, version: int, agno: int, length: int) -> None:
        self.reader = reader
        self.version = version
        self.agno = agno
        self.length = length
        self.block_size = int(sb.sb_blocksize)
        self.sector = int(sb.sb_sectsize)
        self.start = agno * int(sb.sb_agblocks) * self.block_size
        self.where = f"allocation group {agno}"
        self.agf = c_xfs.xfs_agf(reader.read_at(self.start + self.sector, len(c_xfs.xfs_agf)))
        agf = self.agf
        if agf.agf_magicnum != c_xfs.XFS_AGF_MAGIC or agf.agf_versionnum != AGF_VERSION:
            raise _fail(f"AGF magic {agf.agf_magicnum:#x} version {agf.agf_versionnum}", self.where)
        if agf.agf_seqno != agno or agf.agf_length != length:
            raise _fail(
                f"AGF says group {agf.agf_seqno} of {agf.agf_length} blocks "
                f"(expected {agno} of {length})",
                self.where,
            )

    def free_extents(self) -> list[tuple[int, int]]:
        """Sorted, disjoint ``(agbno, count)`` runs: the bnobt's and the AGFL's."""
        runs = sorted(self._bnobt() + [(block, 1) for block in self._agfl()])
        end = 0
        for start, count in runs:
            if start < end:
                raise _fail(f"free extents overlap at block {start}", self.where)
            end = start + count
        return runs

    def _bnobt(self) -> list[tuple[int, int]]:
        """The bnobt's leaf records, walked level by level from the AGF's root."""
        root, levels = int(self.agf.agf_roots[0]), int(self.agf.agf_levels[0])
        if not 1 <= levels <= MAX_BTREE_LEVELS:
            raise _fail(f"free-space B+tree of {levels} levels", self.where)
        header = len(c_xfs.xfs_btree_sblock_crc if self.version == 5 else c_xfs.xfs_btree_sblock)
        magic = BNOBT_MAGICS[self.version]
        seen: set[int] = set()
        level_blocks = [root]
        records: list[tuple[int, int]] = []
        for level in range(levels - 1, -1, -1):
            below: list[int] = []
            for block in level_blocks:
                if not 0 < block < self.length or block in seen:
                    raise _fail(
                        f"free-space B+tree points at block {block} twice or out of the group",
                        self.where,
                    )
                seen.add(block)
                data = self.reader.read_at(self.start + block * self.block_size, self.block_size)
                node = c_xfs.xfs_btree_sblock(data[: len(c_xfs.xfs_btree_sblock)])
                numrecs = int(node.bb_numrecs)
                fanout = (self.block_size - header) // (
                    REC_SIZE if level == 0 else REC_SIZE + PTR_SIZE
                )
                if node.bb_magic != magic or node.bb_level != level or numrecs > fanout:
                    raise _fail(
                        f"free-space B+tree block {block}: magic {node.bb_magic:#x}, level "
                        f"{node.bb_level} (expected {level}), {numrecs} records (at most {fanout})",
                        self.where,
                    )
                if level == 0:
                    records.extend(self._records(data, header, numrecs, block))
                else:
                    at = header + fanout * REC_SIZE  # pointers follow the full key array
                    below.extend(
                        int.from_bytes(data[at + i * PTR_SIZE : at + (i + 1) * PTR_SIZE], "big")
                        for i in range(numrecs)
                    )
            level_blocks = below
        return records

    def _records(self, data: bytes, header: int, numrecs: int, block: int) -> list[tuple[int, int]]:
        out = []
        for i in range(numrecs):
            at = header + i * REC_SIZE
            start = int.from_bytes(data[at : at + 4], "big")
            count = int.from_bytes(data[at + 4 : at + 8], "big")
            # block 0 holds the group's headers (superblock copy, AGF, AGI, AGFL)
            if count == 0 or start == 0 or start + count > self.length:
                raise _fail(
                    f"free-space B+tree block {block} frees blocks {start}+{count} "
                    f"outside the group's {self.length}",
                    self.where,
                )
            out.append((start, count))
        return out

    def _agfl(self) -> list[int]:
        """The blocks on the AGFL: ``flcount`` entries from ``flfirst``, wrapping."""
        agf = self.agf
        count, first = int(agf.agf_flcount), int(agf.agf_flfirst)
        if count == 0:
            return []
        data = self.reader.read_at(self.start + 3 * self.sector, self.sector)
        header = 0
        if self.version == 5:
            if int.from_bytes(data[:4], "big") != AGFL_MAGIC:
                raise _fail("AGFL magic is wrong", self.where)
            header = AGFL_HEADER
        slots = (self.sector - header) // PTR_SIZE
        if count > slots or first >= slots:
            raise _fail(f"AGFL of {count} blocks from slot {first} in {slots} slots", self.where)
        blocks = []
        for i in range(count):
            at = header + (first + i) % slots * PTR_SIZE
            block = int.from_bytes(data[at : at + PTR_SIZE], "big")
            if not 0 < block < self.length:
                raise _fail(f"AGFL holds block {block}, outside the group", self.where)
            blocks.append(block)
        return blocks
