"""btrfs on-disk structures, declared once: read by name everywhere.

Only what the allocation map needs: the superblock up to ``sys_chunk_array``, the
tree node header, keys, leaf items and node pointers, chunk items with their
stripes, and the root item's tree location. Little-endian throughout.
"""

from __future__ import annotations

from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

__all__ = [
    "BLOCK_GROUP_DUP",
    "BLOCK_GROUP_MIRRORED",
    "BLOCK_GROUP_RAID0",
    "BLOCK_GROUP_RAID5",
    "BLOCK_GROUP_RAID6",
    "BLOCK_GROUP_RAID10",
    "CHUNK_ITEM_KEY",
    "CSUM_TYPES",
    "EXTENT_ITEM_KEY",
    "EXTENT_TREE_OBJECTID",
    "MAGIC",
    "MAX_LEVEL",
    "METADATA_ITEM_KEY",
    "ROOT_ITEM_KEY",
    "SUPER_INFO_OFFSET",
    "SUPER_INFO_SIZE",
    "SUPER_MIRROR_SHIFT",
    "SYS_CHUNK_ARRAY_SIZE",
    "c_btrfs",
]

# From include/uapi/linux/btrfs_tree.h and fs/btrfs/ctree.h (Linux 6.x); comments as there.
c_btrfs: Any = cstruct(endian="<").load("""
typedef uint8  __u8;
typedef uint16 __le16;
typedef uint32 __le32;
typedef uint64 __le64;

struct btrfs_disk_key {
    __le64  objectid;
    __u8    type;
    __le64  offset;
};

struct btrfs_dev_item {
    __le64  devid;          /* the internal btrfs device id */
    __le64  total_bytes;    /* size of the device */
    __le64  bytes_used;     /* bytes used */
    __le32  io_align;       /* optimal io alignment for this device */
    __le32  io_width;       /* optimal io width for this device */
    __le32  sector_size;    /* minimal io size for this device */
    __le64  type;           /* type and info about this device */
    __le64  generation;     /* expected generation for this device */
    __le64  start_offset;   /* starting byte of this partition on the device */
    __le32  dev_group;      /* grouping information for allocation decisions */
    __u8    seek_speed;     /* seek speed 0-100 where 100 is fastest */
    __u8    bandwidth;      /* bandwidth 0-100 where 100 is fastest */
    char    uuid[16];       /* btrfs generated uuid for this device */
    char    fsid[16];       /* uuid of FS who owns this device */
};

/* the super block basically lists the main trees of the FS; only its head here */
struct btrfs_super_block {
    char    csum[32];       /* the first 4 fields must match struct btrfs_header */
    char    fsid[16];       /* FS specific uuid */
    __le64  bytenr;         /* this block number */
    __le64  flags;
    char    magic[8];       /* allowed to be different from the btrfs_header from here own down */
    __le64  generation;
    __le64  root;
    __le64  chunk_root;
    __le64  log_root;
    __le64  __unused_log_root_transid;
    __le64  total_bytes;
    __le64  bytes_used;
    __le64  root_dir_objectid;
    __le64  num_devices;
    __le32  sectorsize;
    __le32  nodesize;
    __le32  __unused_leafsize;
    __le32  stripesize;
    __le32  sys_chunk_array_size;
    __le64  chunk_root_generation;
    __le64  compat_flags;
    __le64  compat_ro_flags;
    __le64  incompat_flags;
    __le16  csum_type;
    __u8    root_level;
    __u8    chunk_root_level;
    __u8    log_root_level;
    struct btrfs_dev_item dev_item;
    char    label[256];
    __le64  cache_generation;
    __le64  uuid_tree_generation;
    char    metadata_uuid[16];  /* the fsid used in the metadata headers */
    __le64  nr_global_roots;
    __le64  reserved[27];
    char    sys_chunk_array[2048];
};

/* every tree block (leaf or node) starts with this header */
struct btrfs_header {
    char    csum[32];       /* these first four must match the super block */
    char    fsid[16];       /* FS specific uuid */
    __le64  bytenr;         /* which block this node is supposed to live in */
    __le64  flags;
    char    chunk_tree_uuid[16]; /* allowed to be different from the super from here on down */
    __le64  generation;
    __le64  owner;
    __le32  nritems;
    __u8    level;
};

/* a leaf is full of items; offset and size tell where to find the item's data */
struct btrfs_item {
    struct btrfs_disk_key key;
    __le32  offset;         /* relative to the end of the header */
    __le32  size;
};

/* all non-leaf blocks are nodes, they hold only keys and pointers to other blocks */
struct btrfs_key_ptr {
    struct btrfs_disk_key key;
    __le64  blockptr;
    __le64  generation;
};

struct btrfs_stripe {
    __le64  devid;
    __le64  offset;
    char    dev_uuid[16];
};

struct btrfs_chunk {
    __le64  length;         /* size of this chunk in bytes */
    __le64  owner;          /* objectid of the root referencing this chunk */
    __le64  stripe_len;
    __le64  type;
    __le32  io_align;       /* optimal io alignment for this chunk */
    __le32  io_width;       /* optimal io width for this chunk */
    __le32  sector_size;    /* minimal io size for this chunk */
    __le16  num_stripes;    /* 2^16 stripes is quite a lot, a second limit is the size
                               of a single item in the btree */
    __le16  sub_stripes;    /* sub stripes only matter for raid10 */
    /* additional stripes go here */
};

/* the root tree's ROOT_ITEM: where a tree's root node is; btrfs_inode_item first */
struct btrfs_root_item {
    char    inode[160];
    __le64  generation;
    __le64  root_dirid;
    __le64  bytenr;
    __le64  byte_limit;
    __le64  bytes_used;
    __le64  last_snapshot;
    __le64  flags;
    __le32  refs;
    struct btrfs_disk_key drop_progress;
    __u8    drop_level;
    __u8    level;
};
""")

MAGIC = b"_BHRfS_M"
SUPER_INFO_OFFSET = 64 * 1024  # the primary superblock
SUPER_INFO_SIZE = 4096
SUPER_MIRROR_SHIFT = 12  # copy i (0..2) at 16 KiB << (12 * i): 64 KiB, 64 MiB, 256 GiB
SYS_CHUNK_ARRAY_SIZE = 2048
MAX_LEVEL = 8  # BTRFS_MAX_LEVEL: a tree is at most 8 levels deep (0 = leaf)

# Item types (btrfs_tree.h)
ROOT_ITEM_KEY = 132
EXTENT_ITEM_KEY = 168  # key (logical start, EXTENT_ITEM, length)
METADATA_ITEM_KEY = 169  # skinny metadata: key (logical start, METADATA_ITEM, level)
CHUNK_ITEM_KEY = 228

EXTENT_TREE_OBJECTID = 2

# Block group (chunk) type flags
BLOCK_GROUP_RAID0 = 1 << 3
BLOCK_GROUP_RAID1 = 1 << 4
BLOCK_GROUP_DUP = 1 << 5
BLOCK_GROUP_RAID10 = 1 << 6
BLOCK_GROUP_RAID5 = 1 << 7
BLOCK_GROUP_RAID6 = 1 << 8
BLOCK_GROUP_RAID1C3 = 1 << 9
BLOCK_GROUP_RAID1C4 = 1 << 10
# Profiles where every stripe holds the whole chunk (single has no flag at all).
BLOCK_GROUP_MIRRORED = (
    BLOCK_GROUP_RAID1 | BLOCK_GROUP_DUP | BLOCK_GROUP_RAID1C3 | BLOCK_GROUP_RAID1C4
)

# csum_type -> (name, bytes stored at the start of every block)
CSUM_TYPES = {0: ("crc32c", 4), 1: ("xxhash64", 8), 2: ("sha256", 32), 3: ("blake2b", 32)}
