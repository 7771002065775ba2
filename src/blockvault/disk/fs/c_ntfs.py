"""NTFS on-disk structures, declared once: read and built by name everywhere.

The boot sector (512 bytes, ``dumps()`` gives them back), the MFT record header and
the attribute record header. Little-endian.
"""

from __future__ import annotations

from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

__all__ = [
    "FILE_MAGIC",
    "NTFS_OEM_ID",
    "backup_boot_offset",
    "c_ntfs",
    "cluster_sectors",
    "cluster_sectors_field",
]

# From ntfs-3g include/ntfs-3g/layout.h (the Linux-NTFS project's documentation of the
# format); comments shortened. Its u8/s8 are spelled uint8/int8: in cstruct "u8" means
# an 8-byte integer.
c_ntfs: Any = cstruct(endian="<").load("""
typedef uint16 le16;
typedef uint32 le32;
typedef uint64 le64;
typedef int64  sle64;

typedef struct {
    le16   bytes_per_sector;            /* Size of a sector in bytes. */
    uint8  sectors_per_cluster;         /* Size of a cluster in sectors (> 0x80: 2^(256-n)). */
    le16   reserved_sectors;            /* zero */
    uint8  fats;                        /* zero */
    le16   root_entries;                /* zero */
    le16   sectors;                     /* zero */
    uint8  media_type;                  /* 0xf8 = hard disk */
    le16   sectors_per_fat;             /* zero */
    le16   sectors_per_track;           /* Required to boot Windows. */
    le16   heads;                       /* Required to boot Windows. */
    le32   hidden_sectors;              /* Offset to the start of the partition in sectors. */
    le32   large_sectors;               /* zero */
} BIOS_PARAMETER_BLOCK;

typedef struct {
    uint8  jump[3];                     /* Irrelevant (jump to boot up code).*/
    char   oem_id[8];                   /* Magic "NTFS    ". */
    BIOS_PARAMETER_BLOCK bpb;
    uint8  physical_drive;              /* 0x00 floppy, 0x80 hard disk */
    uint8  current_head;                /* zero */
    uint8  extended_boot_signature;     /* 0x80 */
    uint8  reserved2;                   /* zero */
    sle64  number_of_sectors;           /* Number of sectors in volume (without the backup). */
    sle64  mft_lcn;                     /* Cluster location of mft data. */
    sle64  mftmirr_lcn;                 /* Cluster location of copy of mft. */
    int8   clusters_per_mft_record;     /* Mft record size in clusters (< 0: 2^-n bytes). */
    uint8  reserved0[3];                /* zero */
    int8   clusters_per_index_record;   /* Index block size in clusters. */
    uint8  reserved1[3];                /* zero */
    le64   volume_serial_number;        /* Irrelevant (serial number). */
    le32   checksum;                    /* Boot sector checksum. */
    uint8  bootstrap[426];              /* Irrelevant (boot up code). */
    le16   end_of_sector_marker;        /* End of bootsector magic, 0xaa55. */
} NTFS_BOOT_SECTOR;

typedef struct {
    char   magic[4];                    /* Usually the magic is "FILE". */
    le16   usa_ofs;                     /* Offset of the update sequence array. */
    le16   usa_count;                   /* Entries in it: 1 + bytes / 512. */
    le64   lsn;                         /* $LogFile sequence number for this record. */
    le16   sequence_number;             /* Number of times this mft record has been reused. */
    le16   link_count;                  /* Number of hard links. */
    le16   attrs_offset;                /* Byte offset to the first attribute. */
    le16   flags;                       /* MFT_RECORD_IN_USE = 1, MFT_RECORD_IS_DIRECTORY = 2. */
    le32   bytes_in_use;                /* Number of bytes used in this mft record. */
    le32   bytes_allocated;             /* Number of bytes allocated for this mft record. */
    le64   base_mft_record;             /* Zero for base mft records. */
    le16   next_attr_instance;          /* The instance number for the next attribute. */
    le16   reserved;                    /* Reserved/alignment (NTFS 3.1+). */
    le32   mft_record_number;           /* Number of this mft record (NTFS 3.1+). */
} MFT_RECORD;

typedef struct {
    le32   type;                        /* The (32-bit) type of the attribute. */
    le32   length;                      /* Byte size of the resident part of the attribute. */
    uint8  non_resident;                /* If 0, attribute is resident. */
    uint8  name_length;                 /* Unicode character size of name, 0 if unnamed. */
    le16   name_offset;                 /* Byte offset of the name. */
    le16   flags;                       /* Compressed, encrypted, sparse. */
    le16   instance;                    /* The instance of this attribute record. */
    union {
        struct {
            le32   value_length;        /* Byte size of attribute value. */
            le16   value_offset;        /* Byte offset of the attribute value. */
            uint8  resident_flags;
            int8   reservedR;
        } resident;
        struct {
            sle64  lowest_vcn;          /* First cluster of the value this extent maps. */
            sle64  highest_vcn;         /* Last cluster of the value this extent maps. */
            le16   mapping_pairs_offset; /* Byte offset of the runlist. */
            uint8  compression_unit;
            uint8  reserved1[5];
            sle64  allocated_size;      /* Byte size of disk space allocated. */
            sle64  data_size;           /* Byte size of the attribute value. */
            sle64  initialized_size;    /* Byte size of the initialized part; zeros beyond. */
        } non_resident_part;
    };
} ATTR_RECORD;
""")

NTFS_OEM_ID = b"NTFS    "  # oem_id
FILE_MAGIC = b"FILE"  # MFT_RECORD.magic


def cluster_sectors(field: int) -> int:
    """The sectors per cluster that ``bpb.sectors_per_cluster`` stands for: above 0x80
    it is a negative power of two, ``2 ** (256 - field)`` (clusters of 64 KiB and more)."""
    return 1 << (256 - field) if field > 0x80 else field


def cluster_sectors_field(sectors: int) -> int:
    """``bpb.sectors_per_cluster`` for clusters of ``sectors`` sectors (a power of two)."""
    return sectors if sectors <= 0x80 else 256 - (sectors.bit_length() - 1)


def backup_boot_offset(boot: Any) -> int:
    """Byte offset of the backup boot sector in the volume: right after the sectors the
    parsed boot sector counts (``number_of_sectors`` leaves it out)."""
    return int(boot.number_of_sectors) * int(boot.bpb.bytes_per_sector)
