"""A FAT or NTFS boot sector records where its partition starts ("hidden sectors", which
Windows' and DOS's boot code read): a volume written at another start is told so, in
its boot sector and the copies of it."""

from __future__ import annotations

from blockvault.disk.device import Device, Region
from blockvault.disk.fs import fat
from blockvault.disk.fs.c_fat import c_fat
from blockvault.disk.fs.c_ntfs import NTFS_OEM_ID, c_ntfs

__all__ = ["move_hidden_sectors"]

# BPB_HiddSec (FAT) and bpb.hidden_sectors (NTFS) share one offset and width
HIDDEN_SECTORS = c_fat.fat_bpb.fields["BPB_HiddSec"].offset  # 28


def move_hidden_sectors(device: Device, start: int, size: int, sector_size: int) -> bool:
    """Set the hidden-sector count of the volume at ``start`` (``size`` bytes) to its
    start in ``sector_size`` sectors; False when it is neither FAT nor NTFS."""
    boot = device.read_at(start, 512)
    copies = [0]
    ntfs_boot = c_ntfs.NTFS_BOOT_SECTOR(boot)
    if bytes(ntfs_boot.oem_id) == NTFS_OEM_ID:
        # the backup follows the volume's last sector; ntfs-3g also reads it in the
        # partition's last sector, which differs when the partition is larger
        end = ntfs_boot.number_of_sectors * ntfs_boot.bpb.bytes_per_sector
        copies += sorted({end, size - 512})
    elif fat.detect(Region(device, start, size)):
        fat_boot = c_fat.fat_boot_sector(boot)
        backup = fat_boot.fat32.BPB_BkBootSec
        if bytes(fat_boot.fat32.BS_FilSysType).startswith(b"FAT32") and backup:
            copies.append(backup * fat_boot.bpb.BPB_BytsPerSec)
    else:
        return False
    value = min(start // sector_size, 0xFFFF_FFFF).to_bytes(4, "little")
    for at in copies:
        # a copy is known by its jump and OEM name; anything else there is left alone
        if at + 512 <= size and device.read_at(start + at, 11) == boot[:11]:
            device.write_at(start + at + HIDDEN_SECTORS, value)
    return True
