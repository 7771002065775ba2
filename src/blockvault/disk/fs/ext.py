"""ext2, ext3 and ext4: the allocation map from the block bitmaps.

Layout in brief (see ``Documentation/filesystems/ext4/`` in the kernel):

  block group   ``blocks_per_group`` blocks with one block bitmap, one inode
                bitmap and an inode table; under ``flex_bg`` these may sit in
                another group (usually the first of each flex group).
  bitmap bit    one per block, or per cluster under ``bigalloc``; bit ``i`` of
                group ``g`` is cluster ``g * clusters_per_group + i`` counted from
                ``first_data_block`` (1 for 1 KiB blocks, else 0).
  backups       the superblock and group descriptor table (GDT, plus blocks
                reserved for online growth) repeat in group 0 and, with
                ``sparse_super``, groups 1 and powers of 3, 5 and 7; with
                ``sparse_super2`` only in the two groups the superblock names;
                without either, in every group.
  meta_bg       the GDT is instead split per meta group of one GDT block's worth
                of groups, kept in that meta group's first, second and last group.
  BLOCK_UNINIT  a group whose bitmap was never written (checksummed filesystems
                only): its used blocks are derived, exactly as e2fsprogs does.

Everything allocated in the bitmaps counts, so the journal, resize inode and
other metadata are part of the map. Bytes ``[0, 2048)`` (boot block and primary
superblock) are always used, even with 1 KiB blocks where block 0 is outside
every group.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.fs.bitmap import set_runs
from blockvault.disk.fs.c_ext import EXT4_SUPER_MAGIC, SUPERBLOCK_OFFSET, c_ext
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap

__all__ = ["detect", "read"]

EXT4_MIN_DESC_SIZE = 32
EXT4_MIN_DESC_SIZE_64BIT = 64

# s_feature_compat
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_SPARSE_SUPER2 = 0x0200
# s_feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_BTREE_DIR = 0x0004
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
# s_feature_incompat
INCOMPAT_COMPRESSION = 0x0001
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004  # journal needs recovery
INCOMPAT_JOURNAL_DEV = 0x0008  # an external journal, not a filesystem
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_MMP = 0x0100
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_EA_INODE = 0x0400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000
# Every incompat feature whose on-disk layout we know; others may move the bitmaps.
INCOMPAT_KNOWN = (
    INCOMPAT_COMPRESSION
    | INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_JOURNAL_DEV
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_DIRDATA
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD
)
# What ext3 knows (libblkid's EXT3_FEATURE_*_SUPP); anything more makes it ext4.
EXT3_RO_COMPAT = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR
EXT3_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG

# bg_flags
EXT4_BG_BLOCK_UNINIT = 0x0002  # block bitmap not in use

# s_state
EXT4_ERROR_FS = 0x0002

# Bitmap blocks read in one request at most (flex_bg keeps them adjacent).
_MAX_READ_BLOCKS = 1024
# Groups whose bitmaps are joined into one bitmap at a time; bounds memory on huge disks.
_GROUPS_PER_BATCH = 4096


def detect(reader: Reader) -> bool:
    """An ext2/3/4 superblock (not an external journal) sits at byte 1024."""
    if reader.size < SUPERBLOCK_OFFSET + len(c_ext.ext4_super_block):
        return False
    sb = c_ext.ext4_super_block(reader.read_at(SUPERBLOCK_OFFSET, len(c_ext.ext4_super_block)))
    return bool(
        sb.s_magic == EXT4_SUPER_MAGIC
        and not sb.s_feature_incompat & INCOMPAT_JOURNAL_DEV
        and sb.s_log_block_size <= 6
    )


@dataclass(frozen=True)
class _Group:
    """One group descriptor, block numbers already joined from their halves."""

    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    flags: int


@dataclass(frozen=True)
class _Geometry:
    """The numbers of the superblock that place every group and bitmap."""

    block_size: int
    cluster_ratio: int  # blocks per cluster (bitmap bit); 1 without bigalloc
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    clusters_per_group: int
    group_count: int
    desc_size: int
    inode_table_blocks: int
    reserved_gdt_blocks: int
    first_meta_bg: int
    backup_groups: tuple[int, int]
    compat: int
    ro_compat: int
    incompat: int

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def desc_blocks(self) -> int:
        return -(-self.group_count // self.descs_per_block)

    @property
    def cluster_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.cluster_ratio)

    def group_first_block(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def group_blocks(self, group: int) -> tuple[int, int]:
        """``(first_block, count)`` of a group; the last one may be short."""
        first = self.group_first_block(group)
        return first, min(self.blocks_per_group, self.blocks_count - first)

    def has_super(self, group: int) -> bool:
        """Whether ``group`` holds a superblock copy (e2fsprogs ``ext2fs_bg_has_super``)."""
        if group == 0:
            return True
        if self.compat & COMPAT_SPARSE_SUPER2:
            return group in self.backup_groups
        if group == 1 or not self.ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        if group % 2 == 0:
            return False
        return any(_is_power_of(group, base) for base in (3, 5, 7))

    def descriptor_block(self, index: int) -> int:
        """Block holding GDT block ``index`` (e2fsprogs ``ext2fs_descriptor_block_loc2``)."""
        # With bigalloc and 1 KiB blocks, block 0 is not the superblock's: skip it.
        adjust = int(index == 0 and self.block_size == 1024 and self.cluster_ratio > 1)
        if not self.incompat & INCOMPAT_META_BG or index < self.first_meta_bg:
            return self.first_data_block + 1 + index + adjust
        group = index * self.descs_per_block
        return self.group_first_block(group) + int(self.has_super(group)) + adjust

    def base_metadata(self, group: int) -> list[tuple[int, int]]:
        """Superblock and GDT blocks in ``group`` as ``(block, count)`` runs.

        Mirrors e2fsprogs ``ext2fs_super_and_bgd_loc2``: the blocks a group with
        an uninitialised bitmap still uses.
        """
        start, length = self.group_blocks(group)
        end = start + length
        if start == 0 and self.block_size == 1024:
            start = 1  # 1 KiB bigalloc: the superblock is block 1
        has_super = self.has_super(group)
        runs: list[tuple[int, int]] = []
        if has_super:
            runs.append((start, 1))
        meta_bg = bool(self.incompat & INCOMPAT_META_BG)
        if not meta_bg or group // self.descs_per_block < self.first_meta_bg:
            if has_super:
                old = self.first_meta_bg if meta_bg else self.desc_blocks + self.reserved_gdt_blocks
                runs.append((start + 1, old))
        elif group % self.descs_per_block in (0, 1, self.descs_per_block - 1):
            runs.append((start + int(has_super), 1))
        return [(b, min(n, end - b)) for b, n in runs if b < end]


def _is_power_of(value: int, base: int) -> bool:
    while value % base == 0:
        value //= base
    return value == 1


def _type_name(compat: int, ro_compat: int, incompat: int) -> str:
    """ext4 once any feature ext3 lacks is on, else ext3 with a journal, else ext2."""
    if ro_compat & ~EXT3_RO_COMPAT or incompat & ~EXT3_INCOMPAT:
        return "ext4"
    return "ext3" if compat & COMPAT_HAS_JOURNAL else "ext2"


def _geometry(sb: Any, reader: Reader, fs: str) -> _Geometry:
    """Check the superblock's numbers against each other and the partition."""

    def corrupt(detail: str) -> FilesystemError:
        return FilesystemError(detail, fs=fs, where="superblock (byte 1024)")

    compat, ro_compat, incompat = _features(sb)
    unknown = incompat & ~INCOMPAT_KNOWN
    if unknown:
        raise corrupt(
            f"unknown incompatible features {unknown:#x} may move the bitmaps; "
            "image this partition raw instead"
        )
    if sb.s_log_block_size > 6:
        raise corrupt(f"block size 2^{10 + sb.s_log_block_size} is beyond the 64 KiB maximum")
    block_size = 1024 << sb.s_log_block_size
    ratio = 1
    clusters_per_group = int(sb.s_blocks_per_group)
    if ro_compat & RO_COMPAT_BIGALLOC:
        if not sb.s_log_block_size <= sb.s_log_cluster_size <= 29:
            raise corrupt(f"cluster size 2^{10 + sb.s_log_cluster_size} is below the block size")
        ratio = 1 << (sb.s_log_cluster_size - sb.s_log_block_size)
        clusters_per_group = int(sb.s_clusters_per_group)
    blocks_count = int(sb.s_blocks_count_lo)
    desc_size = EXT4_MIN_DESC_SIZE
    if incompat & INCOMPAT_64BIT:
        blocks_count |= sb.s_blocks_count_hi << 32
        desc_size = int(sb.s_desc_size)
        if not EXT4_MIN_DESC_SIZE_64BIT <= desc_size <= block_size or desc_size & (desc_size - 1):
            raise corrupt(f"group descriptor size {desc_size} is invalid for a 64-bit filesystem")
    if not 8 <= clusters_per_group <= 8 * block_size or clusters_per_group % 8:
        raise corrupt(
            f"{clusters_per_group} clusters per group: not a multiple of 8 that fits "
            f"a {block_size}-byte bitmap block"
        )
    first_data_block = int(sb.s_first_data_block)
    if first_data_block > 1 or blocks_count <= first_data_block:
        raise corrupt(f"first data block {first_data_block} of {blocks_count} blocks")
    blocks_per_group = clusters_per_group * ratio
    group_count = -(-(blocks_count - first_data_block) // blocks_per_group)
    if group_count * sb.s_inodes_per_group != sb.s_inodes_count:
        raise corrupt(
            f"{group_count} groups of {sb.s_inodes_per_group} inodes disagree with the "
            f"inode count {sb.s_inodes_count}"
        )
    size = blocks_count * block_size
    if size > reader.size:
        raise corrupt(
            f"the filesystem spans {size} bytes but its partition has only {reader.size}: "
            "the image is truncated or the partition was shrunk"
        )
    inode_size = int(sb.s_inode_size) if sb.s_rev_level else 128  # GOOD_OLD_REV: fixed
    return _Geometry(
        block_size=block_size,
        cluster_ratio=ratio,
        blocks_count=blocks_count,
        first_data_block=first_data_block,
        blocks_per_group=blocks_per_group,
        clusters_per_group=clusters_per_group,
        group_count=group_count,
        desc_size=desc_size,
        inode_table_blocks=-(-sb.s_inodes_per_group * inode_size // block_size),
        reserved_gdt_blocks=int(sb.s_reserved_gdt_blocks),
        first_meta_bg=int(sb.s_first_meta_bg),
        backup_groups=(int(sb.s_backup_bgs[0]), int(sb.s_backup_bgs[1])),
        compat=compat,
        ro_compat=ro_compat,
        incompat=incompat,
    )


def _features(sb: Any) -> tuple[int, int, int]:
    return int(sb.s_feature_compat), int(sb.s_feature_ro_compat), int(sb.s_feature_incompat)


def _read_groups(reader: Reader, geo: _Geometry, fs: str) -> list[_Group]:
    """All group descriptors, from the primary GDT (or its meta_bg pieces)."""
    record = len(c_ext.ext4_group_desc)
    take = min(geo.desc_size, record)  # a 32-byte descriptor reads as zero high halves
    groups: list[_Group] = []
    for index in range(geo.desc_blocks):
        block = geo.descriptor_block(index)
        if block >= geo.blocks_count:
            raise FilesystemError(
                f"descriptor block {block} lies past the end ({geo.blocks_count} blocks)",
                fs=fs,
                where=f"group descriptor table block {index}",
            )
        data = reader.read_at(block * geo.block_size, geo.block_size)
        for slot in range(geo.descs_per_block):
            number = index * geo.descs_per_block + slot
            if number >= geo.group_count:
                break
            raw = data[slot * geo.desc_size : slot * geo.desc_size + take]
            d = c_ext.ext4_group_desc(raw.ljust(record, b"\0"))
            group = _Group(
                block_bitmap=d.bg_block_bitmap_lo | d.bg_block_bitmap_hi << 32,
                inode_bitmap=d.bg_inode_bitmap_lo | d.bg_inode_bitmap_hi << 32,
                inode_table=d.bg_inode_table_lo | d.bg_inode_table_hi << 32,
                flags=int(d.bg_flags),
            )
            _check_group(group, number, geo, fs)
            groups.append(group)
    return groups


def _check_group(group: _Group, number: int, geo: _Geometry, fs: str) -> None:
    for what, block, count in (
        ("block bitmap", group.block_bitmap, 1),
        ("inode bitmap", group.inode_bitmap, 1),
        ("inode table", group.inode_table, geo.inode_table_blocks),
    ):
        if not geo.first_data_block <= block or block + count > geo.blocks_count:
            raise FilesystemError(
                f"{what} at block {block} lies outside the filesystem "
                f"({geo.blocks_count} blocks); run e2fsck",
                fs=fs,
                where=f"group {number} descriptor",
            )


def _bitmap_runs(
    reader: Reader, geo: _Geometry, groups: list[_Group], uninit: set[int]
) -> list[tuple[int, int]]:
    """Runs of used clusters ``(first, count)`` from the bitmaps on disk.

    Groups are taken a batch at a time: their bitmaps (the first
    ``clusters_per_group`` bits of each bitmap block) are joined into one
    bitmap, so bit ``i`` is cluster ``i`` of the filesystem; ``uninit`` groups
    stay all zero. Bitmap blocks that lie next to each other, as under flex_bg,
    are read in one request.
    """
    group_bytes = geo.clusters_per_group // 8
    runs: list[tuple[int, int]] = []
    for first in range(0, geo.group_count, _GROUPS_PER_BATCH):
        last = min(first + _GROUPS_PER_BATCH, geo.group_count)
        joined = bytearray((last - first) * group_bytes)
        wanted = sorted((groups[g].block_bitmap, g) for g in range(first, last) if g not in uninit)
        i = 0
        while i < len(wanted):
            j = i + 1
            while (
                j < len(wanted)
                and wanted[j][0] == wanted[j - 1][0] + 1
                and j - i < _MAX_READ_BLOCKS
            ):
                j += 1
            start = wanted[i][0]
            data = reader.read_at(start * geo.block_size, (j - i) * geo.block_size)
            for block, g in wanted[i:j]:
                at = (block - start) * geo.block_size
                slot = (g - first) * group_bytes
                joined[slot : slot + group_bytes] = data[at : at + group_bytes]
            i = j
        base = first * geo.clusters_per_group
        nbits = min(len(joined) * 8, geo.cluster_count - base)
        runs.extend((base + s, n) for s, n in set_runs(joined, nbits))
    return runs


def read(reader: Reader) -> FilesystemInfo:
    """The allocation map of the ext2/3/4 filesystem on ``reader``."""
    sb = c_ext.ext4_super_block(reader.read_at(SUPERBLOCK_OFFSET, len(c_ext.ext4_super_block)))
    if sb.s_magic != EXT4_SUPER_MAGIC:
        raise FilesystemError(
            f"bad magic {sb.s_magic:#06x}, expected {EXT4_SUPER_MAGIC:#06x}",
            fs="ext",
            where="superblock (byte 1024)",
        )
    compat, ro_compat, incompat = _features(sb)
    fs = _type_name(compat, ro_compat, incompat)
    geo = _geometry(sb, reader, fs)
    groups = _read_groups(reader, geo, fs)
    uninit: set[int] = set()
    # Only checksummed filesystems may leave bitmaps uninitialised (kernel and e2fsprogs agree).
    if ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM):
        uninit = {g for g, group in enumerate(groups) if group.flags & EXT4_BG_BLOCK_UNINIT}

    bs = geo.block_size
    cluster = bs * geo.cluster_ratio
    origin = geo.first_data_block * bs
    used = ExtentMap(
        (origin + first * cluster, count * cluster)
        for first, count in _bitmap_runs(reader, geo, groups, uninit)
    )
    used |= ExtentMap.span(0, SUPERBLOCK_OFFSET + len(c_ext.ext4_super_block))
    if uninit:
        used |= _uninit_metadata(geo, groups, uninit).align_out(cluster)
    return FilesystemInfo(
        type=fs,
        size=geo.blocks_count * bs,
        block_size=bs,
        used=used,
        label=_label(sb),
        uuid=_uuid(sb),
        note=_note(sb, incompat),
    )


def _uninit_metadata(geo: _Geometry, groups: list[_Group], uninit: set[int]) -> ExtentMap:
    """Bytes used inside the ``uninit`` groups, whose bitmaps were never written.

    Such a group uses its superblock and GDT copy, if it has one, and any
    bitmap or inode table placed in it, its own or (under flex_bg) another
    group's. e2fsprogs counts only the group's own; counting every group's is
    the same on a consistent filesystem and safe on one that is not.
    """
    bs = geo.block_size
    tables: list[tuple[int, int]] = []
    for group in groups:
        tables.append((group.block_bitmap * bs, bs))
        tables.append((group.inode_bitmap * bs, bs))
        tables.append((group.inode_table * bs, geo.inode_table_blocks * bs))
    placed = ExtentMap(tables)
    pieces: list[tuple[int, int]] = []
    for g in sorted(uninit):
        pieces.extend((block * bs, count * bs) for block, count in geo.base_metadata(g))
        first, count = geo.group_blocks(g)
        pieces.extend(placed.clip(first * bs, count * bs).to_pairs())
    return ExtentMap(pieces)


def _label(sb: Any) -> str | None:
    name = bytes(sb.s_volume_name).split(b"\0", 1)[0]
    return name.decode("utf-8", "replace") or None


def _uuid(sb: Any) -> str | None:
    raw = bytes(sb.s_uuid)
    return str(uuid.UUID(bytes=raw)) if any(raw) else None


def _note(sb: Any, incompat: int) -> str | None:
    notes = []
    if incompat & INCOMPAT_RECOVER:
        notes.append("the journal holds unreplayed changes; they are copied with it")
    if sb.s_state & EXT4_ERROR_FS:
        notes.append("the kernel recorded errors on this filesystem; run e2fsck")
    return "; ".join(notes) or None
