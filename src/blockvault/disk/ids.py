"""New identities for a copy that will live beside its original (``--new-ids``).

Two disks with the same GPT GUIDs or filesystem UUIDs confuse the kernel,
udev, mount-by-UUID and bootloaders, so a copy meant to sit next to its source
gets fresh ones: the GPT disk and partition GUIDs (or the MBR disk signature),
the ext2/3/4 UUID (through ``tune2fs -U random``, which also rewrites the
metadata checksums seeded by it), the FAT volume id and the NTFS serial
number (in the boot sector and its backup). A disk replacement keeps them, so
this is never the default.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

from blockvault.disk.device import Device, Reader
from blockvault.disk.fs import ext, fat, ntfs
from blockvault.disk.fs.c_fat import EXTENDED_BPB, c_fat
from blockvault.disk.fs.c_ntfs import c_ntfs
from blockvault.disk.table import PartitionTable
from blockvault.disk.table.write import write_table
from blockvault.errors import DeviceError

__all__ = ["fat_serial_writes", "new_table_ids", "ntfs_serial_writes", "renew_ids"]

# where the serial lives: BS_VolID (in either extended BPB), volume_serial_number
_FAT16_VOL_ID = EXTENDED_BPB + c_fat.fat16_ebpb.fields["BS_VolID"].offset  # 39
_FAT32_VOL_ID = EXTENDED_BPB + c_fat.fat32_ebpb.fields["BS_VolID"].offset  # 67
_NTFS_SERIAL = c_ntfs.NTFS_BOOT_SECTOR.fields["volume_serial_number"].offset  # 72


def new_table_ids(table: PartitionTable) -> PartitionTable:
    """``table`` with a new disk GUID and partition GUIDs (GPT) or disk signature (MBR)."""
    if table.kind == "gpt":
        parts = tuple(replace(p, uuid=str(uuid.uuid4())) for p in table.partitions)
        return replace(table, disk_id=str(uuid.uuid4()), partitions=parts)
    return replace(table, disk_id=f"0x{secrets.randbelow(0xFFFF_FFFF) + 1:08x}")


def fat_serial_writes(boot: bytes, serial: int) -> list[tuple[int, bytes]]:
    """Writes (offset in the volume, bytes) giving a FAT volume the id ``serial``.

    FAT32 keeps a backup boot sector; it gets the same id so the two still agree.
    """
    sector = c_fat.fat_boot_sector(boot[:512])
    fat32 = sector.bpb.BPB_FATSz16 == 0
    at = _FAT32_VOL_ID if fat32 else _FAT16_VOL_ID
    value = (serial & 0xFFFF_FFFF).to_bytes(4, "little")
    writes = [(at, value)]
    backup = sector.fat32.BPB_BkBootSec if fat32 else 0
    if backup not in (0, 0xFFFF):
        writes.append((backup * sector.bpb.BPB_BytsPerSec + at, value))
    return writes


def ntfs_serial_writes(boot: bytes, serial: int) -> list[tuple[int, bytes]]:
    """Writes (offset in the volume, bytes) giving an NTFS volume the serial ``serial``,
    in the boot sector and in the backup at the volume's last sector."""
    sector = c_ntfs.NTFS_BOOT_SECTOR(boot[:512])
    value = (serial & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
    backup = sector.number_of_sectors * sector.bpb.bytes_per_sector
    return [(_NTFS_SERIAL, value), (backup + _NTFS_SERIAL, value)]


def _ext_new_uuid(path: Path, offset: int, size: int) -> None:
    """``tune2fs -U random`` on the partition, through a loop device over its bytes."""
    loop = _run(
        "losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size), path
    )
    try:
        # -f: a restored copy may look "not cleanly checked" to tune2fs; its data is whole
        _run("tune2fs", "-f", "-U", "random", loop)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)


def _run(*args: str | os.PathLike[str]) -> str:
    command = [os.fspath(a) for a in args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise DeviceError(f"{command[0]} failed: {last}", path=command[-1])
    return done.stdout.strip()


def renew_ids(device: Device, table: PartitionTable | None) -> list[str]:
    """Give the disk on ``device`` (already written) new table and filesystem ids.

    ``table`` is the partition table as written on it (None: one filesystem on the
    whole device). Returns what changed, one short line each, for the report.
    """
    changed: list[str] = []
    if table is not None:
        renewed = new_table_ids(table)
        write_table(device, renewed)
        changed.append(f"{table.kind} disk id {table.disk_id} -> {renewed.disk_id}")
        spans = [(p.number, p.start, p.size) for p in table.data_partitions]
    else:
        spans = [(0, 0, device.size)]
    ext_spans: list[tuple[int, int, int]] = []
    for number, start, size in spans:
        volume: Reader = device.region(start, size)
        if fat.detect(volume) and not ntfs.detect(volume):
            boot = volume.read_at(0, 512)
            writes = fat_serial_writes(boot, secrets.randbits(32))
        elif ntfs.detect(volume):
            boot = volume.read_at(0, 512)
            writes = ntfs_serial_writes(boot, secrets.randbits(64))
        elif ext.detect(volume):
            ext_spans.append((number, start, size))
            continue
        else:
            continue
        for offset, data in writes:
            device.write_at(start + offset, data)
        changed.append(f"partition {number}: new filesystem serial")
    device.sync()
    for number, start, size in ext_spans:
        _ext_new_uuid(device.path, start, size)
        changed.append(f"partition {number}: new ext filesystem UUID")
    return changed
