"""partclone image structures, declared once (read by the importer, written by the exporter).

An image is ``header | bitmap | used blocks``, little-endian. Version 2 (``0002``,
partclone 0.3.0 and later) has a 110-byte header ending in a CRC32 of the bytes before
it, a bitmap of one bit per block followed by its CRC32, and after every
``blocks_per_checksum`` used blocks (and after the last, partial strip) one checksum of
``checksum_size`` bytes. Version 1 (``0001``) has a 4160-byte header, a bitmap of one byte
per block followed by ``BiTmAgIc``, and a CRC after every block. partclone's CRC32 starts
from 0xFFFFFFFF and applies no final XOR: see ``partclone_crc32``.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

__all__ = [
    "BITMAP_BIT",
    "BITMAP_BYTE",
    "CHECKSUM_CRC32",
    "CHECKSUM_NONE",
    "CHECKSUM_SIZES",
    "CHECKSUM_XXH64",
    "CHECKSUM_XXH128",
    "ENDIAN_MARK",
    "FS_TAGS",
    "MAGIC",
    "V1_BITMAP_MAGIC",
    "V1_HEADER_SIZE",
    "V2_HEADER_SIZE",
    "c_partclone",
    "partclone_crc32",
]

_DEFS = """
struct image_head_v2 {
    char    magic[16];              /* "partclone-image\\0" */
    char    ptc_version[14];        /* version of the partclone that wrote it, e.g. "0.3.23" */
    char    version[4];             /* "0002" */
    uint16  endianess;              /* 0xC0DE as written by a little-endian machine */
    char    fs[16];                 /* "EXTFS", "FAT", "NTFS", "raw", ... NUL padded */
    uint64  device_size;            /* bytes */
    uint64  totalblock;
    uint64  usedblocks;             /* as the filesystem counts them */
    uint64  used_bitmap;            /* set bits in the bitmap */
    uint32  block_size;
    uint32  feature_size;           /* 18: the bytes from here to crc */
    uint16  image_version;          /* 2 */
    uint16  cpu_bits;
    uint16  checksum_mode;          /* CHECKSUM_* */
    uint16  checksum_size;          /* bytes per checksum */
    uint32  blocks_per_checksum;
    uint8   reseed;                 /* 1: each strip's checksum starts afresh */
    uint8   bitmap_mode;            /* BITMAP_* */
    uint32  crc;                    /* partclone_crc32 of the 106 bytes before it */
};

struct image_head_v1 {
    char    magic[15];              /* "partclone-image" */
    char    fs[15];
    char    version[4];             /* "0001" */
    char    padding[2];
    uint32  block_size;
    uint64  device_size;
    uint64  totalblock;
    uint64  usedblocks;
    char    buff[4096];
};
"""
c_partclone: Any = cstruct(endian="<").load(_DEFS)

MAGIC: Final = b"partclone-image"
V2_HEADER_SIZE: Final = 110
V1_HEADER_SIZE: Final = 4160
ENDIAN_MARK: Final = 0xC0DE
V1_BITMAP_MAGIC: Final = b"BiTmAgIc"

CHECKSUM_NONE: Final = 0x00
CHECKSUM_CRC32: Final = 0x20
CHECKSUM_XXH64: Final = 0x30
CHECKSUM_XXH128: Final = 0x31
CHECKSUM_SIZES: Final = {
    CHECKSUM_NONE: 0,
    CHECKSUM_CRC32: 4,
    CHECKSUM_XXH64: 8,
    CHECKSUM_XXH128: 16,
}

BITMAP_BIT: Final = 1  # one bit per block, block n is bit n & 7 of byte n >> 3
BITMAP_BYTE: Final = 8  # one byte per block (version 1 only)

FS_TAGS: Final = {
    "EXTFS": "ext4",  # ext2/3/4 alike; the superblock tells which
    "FAT": "fat32",  # FAT12/16/32 alike; the boot sector tells which
    "FAT12": "fat12",
    "FAT16": "fat16",
    "FAT32": "fat32",
    "VFAT": "fat32",
    "NTFS": "ntfs",
    "raw": "raw",
    "XFS": "xfs",
    "BTRFS": "btrfs",
    "EXFAT": "exfat",
}
"""partclone's filesystem tag -> blockvault's family name (callers refine from the data)."""

assert len(c_partclone.image_head_v2) == V2_HEADER_SIZE
assert len(c_partclone.image_head_v1) == V1_HEADER_SIZE


def partclone_crc32(data: bytes | memoryview, crc: int = 0xFFFFFFFF) -> int:
    """partclone's CRC32: zlib's polynomial, seeded 0xFFFFFFFF, no final XOR. ``crc``
    carries a running value over several pieces."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
