"""A FAT or NTFS boot sector records where its partition starts ("hidden sectors", which
Windows' and DOS's boot code read): a volume written at another start is told so, in
its boot sector and the copies of it."""

from __future__ import annotations

from blockvault.disk.device import Device, Region
from blockvault.disk.fs import fat

__all__ = ["move_hidden_sectors"]

HIDDEN_SECTORS = 28  # BPB_HiddSec (FAT), hidden_sectors (NTFS): sectors before the partition
FAT32_BACKUP_BOOT = 0x32  # BPB_BkBootSec: the sector of FAT32's backup boot sector
NTFS_SECTORS = 40  # number_of_sectors: NTFS's backup boot sector lies right after them
NTFS_OEM = b"NTFS    "


def move_hidden_sectors(device: Device, start: int, size: int, sector_size: int) -> bool:
    """Set the hidden-sector count of the volume at ``start`` (``size`` bytes) to its
    start in ``sector_size`` sectors; False when it is neither FAT nor NTFS."""
    boot = device.read_at(start, 512)
    bytes_per_sector = int.from_bytes(boot[11:13], "little")
    copies = [0]
    if boot[3:11] == NTFS_OEM:
        # the backup follows the volume's last sector; ntfs-3g also reads it in the
        # partition's last sector, which differs when the partition is larger
        sectors = int.from_bytes(boot[NTFS_SECTORS : NTFS_SECTORS + 8], "little")
        copies += sorted({sectors * bytes_per_sector, size - 512})
    elif fat.detect(Region(device, start, size)):
        backup = int.from_bytes(boot[FAT32_BACKUP_BOOT : FAT32_BACKUP_BOOT + 2], "little")
        if boot[0x52:0x57] == b"FAT32" and backup:
            copies.append(backup * bytes_per_sector)
    else:
        return False
    value = min(start // sector_size, 0xFFFF_FFFF).to_bytes(4, "little")
    for at in copies:
        # a copy is known by its jump and OEM name; anything else there is left alone
        if at + 512 <= size and device.read_at(start + at, 11) == boot[:11]:
            device.write_at(start + at + HIDDEN_SECTORS, value)
    return True
