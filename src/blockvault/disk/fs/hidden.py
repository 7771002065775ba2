"""The boot sector of a FAT or NTFS volume and its copies.

A volume written at another start is told so ("hidden sectors", which Windows' and
DOS's boot code read); a copy given new ids gets a new serial. Either change goes to
the boot sector and to every copy of it, which only the boot sector locates: so each
offset is bounded by the volume (a hostile boot sector may point anywhere) and must
hold the same jump and OEM name before a byte is written there.
"""

from __future__ import annotations

from blockvault.disk.device import Device, Reader, Region
from blockvault.disk.fs import fat
from blockvault.disk.fs.c_fat import c_fat
from blockvault.disk.fs.c_ntfs import NTFS_OEM_ID, backup_boot_offset, c_ntfs

__all__ = ["boot_sector_copies", "move_hidden_sectors"]

# BPB_HiddSec (FAT) and bpb.hidden_sectors (NTFS) share one offset and width
HIDDEN_SECTORS = c_fat.fat_bpb.fields["BPB_HiddSec"].offset  # 28
BOOT_SECTOR = 512
NO_BACKUP = (0, 0xFFFF)  # BPB_BkBootSec values that mean "none"


def boot_sector_copies(volume: Reader) -> list[int] | None:
    """Offsets in ``volume`` of its boot sector (0) and the copies of it that lie inside
    the volume; None when it is neither FAT nor NTFS."""
    if volume.size < BOOT_SECTOR:
        return None
    boot = volume.read_at(0, BOOT_SECTOR)
    ntfs_boot = c_ntfs.NTFS_BOOT_SECTOR(boot)
    if bytes(ntfs_boot.oem_id) == NTFS_OEM_ID:
        # the backup follows the volume's last sector; ntfs-3g also reads it in the
        # partition's last sector, which differs when the partition is larger
        candidates = {backup_boot_offset(ntfs_boot), volume.size - BOOT_SECTOR}
    elif fat.detect(volume):
        fat_boot = c_fat.fat_boot_sector(boot)
        backup = int(fat_boot.fat32.BPB_BkBootSec)
        fat32 = fat.geometry(fat_boot).fat32_form
        candidates = (
            {backup * fat_boot.bpb.BPB_BytsPerSec} if fat32 and backup not in NO_BACKUP else set()
        )
    else:
        return None
    copies = [
        at
        for at in sorted(candidates - {0})
        if 0 < at <= volume.size - BOOT_SECTOR and volume.read_at(at, 11) == boot[:11]
    ]
    return [0, *copies]


def move_hidden_sectors(device: Device, start: int, size: int, sector_size: int) -> bool:
    """Set the hidden-sector count of the volume at ``start`` (``size`` bytes) to its
    start in ``sector_size`` sectors; False when it is neither FAT nor NTFS."""
    copies = boot_sector_copies(Region(device, start, size))
    if copies is None:
        return False
    value = min(start // sector_size, 0xFFFF_FFFF).to_bytes(4, "little")
    for at in copies:
        device.write_at(start + at + HIDDEN_SECTORS, value)
    return True
