"""FAT12, FAT16 and FAT32: the allocation map from the file allocation table.

Layout (Microsoft "FAT: General Overview of On-Disk Format", 2000):

  reserved region   the boot sector and, on FAT32, FSInfo and the backup boot
                    sector: ``BPB_RsvdSecCnt`` sectors, always used.
  FAT region        ``BPB_NumFATs`` copies of the table, always used.
  root directory    FAT12/16 only: ``BPB_RootEntCnt`` 32-byte entries, always
                    used. FAT32 keeps its root in clusters like any directory.
  data region       clusters numbered from 2; cluster ``n`` is used when its FAT
                    entry is non-zero (part of a chain or end of chain).

The FAT type follows from the cluster count, as the specification demands:
below 4085 clusters FAT12, else FAT16. A boot sector in FAT32 form (16-bit FAT
size zero, the 32-bit one set) is FAT32 whatever its count: ``mkfs.fat -F 32``
makes such small volumes and Linux and dosfstools read them as FAT32. A FAT16
form with 65525 clusters or more has no valid reading and is refused.

Bad clusters (entry ``0xFF7``, ``0xFFF7``, ``0x0FFFFFF7``) count as unused, as
partclone does: no file owns them, their contents mean nothing, and reading
them on the failing disk they came from would stall or fail the backup. The
mark itself lives in the FAT, which is copied, so a restore keeps them bad.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.fs.bitmap import entry_runs
from blockvault.disk.fs.c_fat import (
    BOOT_SIGNATURE,
    DIR_ENTRY_SIZE,
    FOREIGN_OEM,
    NO_LABEL,
    OLD_BOOT_SIGNATURE,
    c_fat,
)
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap

__all__ = ["Geometry", "detect", "geometry", "read"]

EXT_FLAGS_MIRRORING_OFF = 0x80
EXT_FLAGS_ACTIVE_FAT = 0x0F
FAT12_MAX_CLUSTERS = 4084  # 4085 or more clusters is FAT16
FAT16_MAX_CLUSTERS = 65524  # 65525 or more clusters is FAT32


@dataclass(frozen=True)
class Geometry:
    """Where each region starts, in sectors, derived from the BPB as the specification does."""

    sector: int  # bytes per sector
    fat32_form: bool  # the BPB gives the FAT size in BPB_FATSz32, not BPB_FATSz16
    cluster_sectors: int
    reserved: int
    fats: int
    fat_sectors: int
    root_entries: int  # of the FAT12/16 fixed root directory, 32 bytes each
    total_sectors: int
    active_fat: int  # the FAT to read

    @property
    def root_bytes(self) -> int:
        return self.root_entries * DIR_ENTRY_SIZE

    @property
    def root_sectors(self) -> int:
        return -(-self.root_bytes // self.sector)

    @property
    def data_start(self) -> int:
        return self.reserved + self.fats * self.fat_sectors + self.root_sectors

    @property
    def clusters(self) -> int:
        return max(0, self.total_sectors - self.data_start) // self.cluster_sectors

    @property
    def bits(self) -> int:
        """Entry width: the cluster count decides (fatgen103, section 3.5), or the FAT32 form."""
        if self.fat32_form or self.clusters > FAT16_MAX_CLUSTERS:
            return 32
        return 12 if self.clusters <= FAT12_MAX_CLUSTERS else 16


def geometry(boot: Any) -> Geometry:
    """The regions of the volume whose parsed ``fat_boot_sector`` is ``boot``."""
    bpb, ebpb32 = boot.bpb, boot.fat32
    sector = int(bpb.BPB_BytsPerSec)
    fat32_form = not bpb.BPB_FATSz16 and bool(ebpb32.BPB_FATSz32)
    active = 0
    # FAT32 may switch mirroring off and name one active FAT; otherwise the first rules.
    if fat32_form and ebpb32.BPB_ExtFlags & EXT_FLAGS_MIRRORING_OFF:
        active = ebpb32.BPB_ExtFlags & EXT_FLAGS_ACTIVE_FAT
    return Geometry(
        sector=sector,
        fat32_form=fat32_form,
        cluster_sectors=int(bpb.BPB_SecPerClus),
        reserved=int(bpb.BPB_RsvdSecCnt),
        fats=int(bpb.BPB_NumFATs),
        fat_sectors=int(bpb.BPB_FATSz16 or ebpb32.BPB_FATSz32),
        root_entries=int(bpb.BPB_RootEntCnt),
        total_sectors=int(bpb.BPB_TotSec16 or bpb.BPB_TotSec32),
        active_fat=int(active),
    )


def _plausible(bpb: Any) -> bool:
    """The checks libblkid and the kernel make before trusting a parsed ``fat_bpb``."""
    return bool(
        bpb.BS_jmpBoot[0] in (0xEB, 0xE9)
        and bytes(bpb.BS_OEMName) not in FOREIGN_OEM
        and bpb.BPB_BytsPerSec in (512, 1024, 2048, 4096)
        and bpb.BPB_SecPerClus in (1, 2, 4, 8, 16, 32, 64, 128)
        and bpb.BPB_RsvdSecCnt >= 1
        and bpb.BPB_NumFATs >= 1
        and (bpb.BPB_Media == 0xF0 or bpb.BPB_Media >= 0xF8)
        and (bpb.BPB_TotSec16 or bpb.BPB_TotSec32)
    )


def detect(reader: Reader) -> bool:
    """A boot sector with a sane BPB that is not NTFS or exFAT."""
    if reader.size < 512:
        return False
    head = reader.read_at(0, 512)
    return _plausible(c_fat.fat_bpb(head))


def read(reader: Reader) -> FilesystemInfo:
    """The allocation map of the FAT filesystem on ``reader``."""
    head = reader.read_at(0, 512)
    boot = c_fat.fat_boot_sector(head)
    layout = geometry(boot)
    bits = layout.bits
    fs = f"fat{bits}"
    ebpb = boot.fat32 if bits == 32 else boot.fat16

    def corrupt(detail: str) -> FilesystemError:
        return FilesystemError(detail, fs=fs, where="boot sector (byte 0)")

    sector = layout.sector
    size = layout.total_sectors * sector
    if layout.clusters == 0:
        raise corrupt(
            f"{layout.total_sectors} sectors leave no room for data after "
            f"{layout.data_start} sectors of reserved area, FATs and root directory"
        )
    if size > reader.size:
        raise corrupt(
            f"the filesystem spans {size} bytes but its partition has only {reader.size}: "
            "the image is truncated or the partition was shrunk"
        )
    if bits == 32 and not layout.fat32_form:
        raise corrupt(
            f"{layout.clusters} clusters are more than FAT16 can address, "
            "but the boot sector is not in FAT32 form"
        )
    if bits == 32 and layout.root_sectors:
        raise corrupt("FAT32 with a fixed root directory: the BPB is inconsistent")
    if layout.active_fat >= layout.fats:
        raise corrupt(f"the active FAT is number {layout.active_fat} of only {layout.fats}")
    entries = layout.clusters + 2  # entries 0 and 1 are reserved
    if layout.fat_sectors * sector * 8 < entries * bits:
        raise corrupt(
            f"a FAT of {layout.fat_sectors} sectors cannot hold {entries} {bits}-bit entries"
        )
    fat_offset = (layout.reserved + layout.active_fat * layout.fat_sectors) * sector
    table = reader.read_at(fat_offset, (entries * bits + 7) // 8)

    cluster = layout.cluster_sectors * sector
    data = layout.data_start * sector
    runs = entry_runs(table, bits, 2, layout.clusters, skip_bad=True)
    used = ExtentMap(
        [(0, data), *((data + (first - 2) * cluster, count * cluster) for first, count in runs)]
    )
    return FilesystemInfo(
        type=fs,
        size=size,
        block_size=cluster,
        used=used,
        label=_label(ebpb),
        uuid=_serial(ebpb),
    )


def _label(ebpb: Any) -> str | None:
    if ebpb.BS_BootSig != BOOT_SIGNATURE:  # 0x28: a serial but no label
        return None
    raw = bytes(ebpb.BS_VolLab)
    if raw == NO_LABEL:
        return None
    return raw.rstrip(b" \0").decode("cp437") or None


def _serial(ebpb: Any) -> str | None:
    """The volume id as Windows and blkid print it, ``ABCD-1234``."""
    if ebpb.BS_BootSig not in (BOOT_SIGNATURE, OLD_BOOT_SIGNATURE):
        return None
    serial = int(ebpb.BS_VolID)
    return f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
