"""LVM2 on-disk structures, declared once: read and built by name everywhere.

From lib/format_text/layout.h and lib/label/label.h (LVM2 2.03); comments as there.
All little-endian. Offsets and sizes are in bytes unless a name says sectors.
"""

from __future__ import annotations

import zlib
from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

__all__ = [
    "FMTT_MAGIC",
    "INITIAL_CRC",
    "LABEL_ID",
    "LABEL_SCAN_SECTORS",
    "LVM2_LABEL",
    "MDA_HEADER_SIZE",
    "SECTOR_SIZE",
    "c_lvm",
    "calc_crc",
]

SECTOR_SIZE = 512
LABEL_SCAN_SECTORS = 4  # the label lies in one of the first four sectors
LABEL_ID = b"LABELONE"
LVM2_LABEL = b"LVM2 001"
FMTT_MAGIC = b"\x20\x4c\x56\x4d\x32\x20\x78\x5b\x35\x41\x25\x72\x30\x4e\x2a\x3e"
MDA_HEADER_SIZE = 512
INITIAL_CRC = 0xF597A6CF

c_lvm: Any = cstruct(endian="<").load("""
/* On disk - 32 bytes */
struct label_header {
    char     id[8];          /* LABELONE */
    uint64   sector_xl;      /* Sector number of this label */
    uint32   crc_xl;         /* From next field to end of sector */
    uint32   offset_xl;      /* Offset from start of struct to contents */
    char     type[8];        /* LVM2 001 */
};

/* On disk */
struct disk_locn {
    uint64   offset;         /* Offset in bytes to start sector */
    uint64   size;           /* Bytes */
};

/* Fields with the suffix _xl should be xlate'd wherever they appear */
/* On disk */
struct pv_header {
    char     pv_uuid[32];    /* ID_LEN */
    /* This size can be overridden if PV belongs to a VG */
    uint64   device_size_xl; /* Bytes */
    /* NULL-terminated list of data areas followed by */
    /* NULL-terminated list of metadata area headers */
};

/* On disk */
struct raw_locn {
    uint64   offset;         /* Offset in bytes to start sector */
    uint64   size;           /* Bytes */
    uint32   checksum;
    uint32   flags;
};

/* On disk */
/* Structure size limited to one sector */
struct mda_header {
    uint32   checksum_xl;    /* Checksum of rest of mda_header */
    char     magic[16];      /* To aid scans for metadata */
    uint32   version;
    uint64   start;          /* Absolute start byte of mda_header */
    uint64   size;           /* Size of metadata area */
    /* NULL-terminated list of raw_locn, the first the committed metadata */
};
""")


def calc_crc(data: bytes, initial: int = INITIAL_CRC) -> int:
    """LVM2's ``calc_crc``: CRC-32 (the zlib polynomial) without the final inversion."""
    return zlib.crc32(data, initial ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
