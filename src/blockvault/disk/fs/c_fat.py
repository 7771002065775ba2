"""FAT12/16/32 on-disk structures, declared once: read and built by name everywhere.

Field names, offsets and comments from the Microsoft FAT specification (fatgen103),
sections 3 (boot sector and BPB), 5 (FSInfo) and 6 (directory entry). Little-endian.
``fat_boot_sector`` is the whole 512-byte first sector: parse it, set fields by
name, ``dumps()`` it back (its union keeps the FAT12/16 and FAT32 views in step).
"""

from __future__ import annotations

from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

__all__ = [
    "BOOT_SIGNATURE",
    "DIR_ENTRY_SIZE",
    "EXTENDED_BPB",
    "FOREIGN_OEM",
    "FSINFO_LEAD_SIG",
    "FSINFO_STRUC_SIG",
    "NO_LABEL",
    "OLD_BOOT_SIGNATURE",
    "c_fat",
]

c_fat: Any = cstruct(endian="<").load("""
/* Boot sector and BPB structure, common to all FAT types (offset 0) */
struct fat_bpb {
    uint8   BS_jmpBoot[3];      /* jump to boot code: EB xx 90 or E9 xx xx */
    char    BS_OEMName[8];      /* name of the formatting system, informational */
    uint16  BPB_BytsPerSec;     /* 512, 1024, 2048 or 4096 */
    uint8   BPB_SecPerClus;     /* power of 2, 1 to 128 */
    uint16  BPB_RsvdSecCnt;     /* sectors of the reserved region, never 0 */
    uint8   BPB_NumFATs;        /* copies of the FAT, normally 2 */
    uint16  BPB_RootEntCnt;     /* 32-byte root directory entries; 0 on FAT32 */
    uint16  BPB_TotSec16;       /* total sectors if < 0x10000, else 0 */
    uint8   BPB_Media;          /* 0xF0, 0xF8 to 0xFF */
    uint16  BPB_FATSz16;        /* sectors per FAT on FAT12/16; 0 on FAT32 */
    uint16  BPB_SecPerTrk;      /* geometry for INT 13h */
    uint16  BPB_NumHeads;       /* geometry for INT 13h */
    uint32  BPB_HiddSec;        /* sectors before this partition */
    uint32  BPB_TotSec32;       /* total sectors if BPB_TotSec16 is 0 */
};

/* FAT12 and FAT16 extended BPB (offset 36) */
struct fat16_ebpb {
    uint8   BS_DrvNum;          /* INT 13h drive number */
    uint8   BS_Reserved1;       /* used by Windows NT */
    uint8   BS_BootSig;         /* 0x29: the next three fields are present */
    uint32  BS_VolID;           /* volume serial number */
    char    BS_VolLab[11];      /* volume label, "NO NAME    " if none */
    char    BS_FilSysType[8];   /* "FAT12   " etc., informational only */
};

/* FAT32 extended BPB (offset 36) */
struct fat32_ebpb {
    uint32  BPB_FATSz32;        /* sectors per FAT */
    uint16  BPB_ExtFlags;       /* bits 0-3 active FAT, bit 7 set: only that one is used */
    uint16  BPB_FSVer;          /* version, 0:0 */
    uint32  BPB_RootClus;       /* first cluster of the root directory */
    uint16  BPB_FSInfo;         /* sector of the FSInfo structure */
    uint16  BPB_BkBootSec;      /* sector of the backup boot sector */
    uint8   BPB_Reserved[12];
    uint8   BS_DrvNum;
    uint8   BS_Reserved1;
    uint8   BS_BootSig;         /* 0x29: the next three fields are present */
    uint32  BS_VolID;
    char    BS_VolLab[11];
    char    BS_FilSysType[8];   /* "FAT32   ", informational only */
};

/* The first sector of every FAT volume */
struct fat_boot_sector {
    fat_bpb     bpb;
    union {
        fat16_ebpb  fat16;
        fat32_ebpb  fat32;
    };
    uint8   BS_BootCode[420];   /* boot code (FAT32 form; FAT12/16 has 28 bytes more) */
    uint16  BS_Signature;       /* 0xAA55: bytes 55 AA at offset 510 */
};

/* FAT32 FSInfo sector (BPB_FSInfo): hints only, never trusted for allocation */
struct fat_fsinfo {
    uint32  FSI_LeadSig;        /* 0x41615252 "RRaA" */
    uint8   FSI_Reserved1[480];
    uint32  FSI_StrucSig;       /* 0x61417272 "rrAa" */
    uint32  FSI_Free_Count;     /* free clusters, 0xFFFFFFFF: unknown */
    uint32  FSI_Nxt_Free;       /* where to look for a free cluster, 0xFFFFFFFF: unknown */
    uint8   FSI_Reserved2[12];
    uint32  FSI_TrailSig;       /* 0xAA550000 */
};

/* A 32-byte short directory entry */
struct fat_dir_entry {
    char    DIR_Name[11];       /* 8.3 name; first byte 0xE5: free, 0x00: end of directory */
    uint8   DIR_Attr;           /* ATTR_READ_ONLY 0x01 ... ATTR_LONG_NAME 0x0F */
    uint8   DIR_NTRes;          /* Windows NT: bits 3/4 show base/extension in lower case */
    uint8   DIR_CrtTimeTenth;
    uint16  DIR_CrtTime;
    uint16  DIR_CrtDate;
    uint16  DIR_LstAccDate;
    uint16  DIR_FstClusHI;      /* high word of the first cluster (FAT32 only) */
    uint16  DIR_WrtTime;
    uint16  DIR_WrtDate;
    uint16  DIR_FstClusLO;      /* low word of the first cluster */
    uint32  DIR_FileSize;
};
""")

EXTENDED_BPB = len(c_fat.fat_bpb)  # 36: offset of the type-specific part
DIR_ENTRY_SIZE = len(c_fat.fat_dir_entry)  # 32
BOOT_SIGNATURE = 0x29  # BS_BootSig: serial, label and type follow
OLD_BOOT_SIGNATURE = 0x28  # BS_BootSig: serial only
FSINFO_LEAD_SIG = 0x41615252
FSINFO_STRUC_SIG = 0x61417272
NO_LABEL = b"NO NAME    "
FOREIGN_OEM = (b"NTFS    ", b"EXFAT   ")  # share the jump and BPB shape, not the layout
