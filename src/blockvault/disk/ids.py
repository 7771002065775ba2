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
from blockvault.disk.fs import ext, fat
from blockvault.disk.fs.c_fat import EXTENDED_BPB, c_fat
from blockvault.disk.fs.c_ntfs import NTFS_OEM_ID, c_ntfs
from blockvault.disk.fs.hidden import boot_sector_copies
from blockvault.disk.table import PartitionTable
from blockvault.disk.table.write import write_table
from blockvault.errors import DeviceError

__all__ = ["new_table_ids", "renew_ids"]

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


def _serial_field(boot: bytes) -> tuple[int, int]:
    """Where a FAT or NTFS boot sector keeps its volume serial: (offset, bytes)."""
    if bytes(c_ntfs.NTFS_BOOT_SECTOR(boot).oem_id) == NTFS_OEM_ID:
        return _NTFS_SERIAL, 8
    fat32 = fat.geometry(c_fat.fat_boot_sector(boot)).fat32_form
    return (_FAT32_VOL_ID if fat32 else _FAT16_VOL_ID), 4


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
        copies = boot_sector_copies(volume)  # FAT and NTFS: the serial in each
        if copies is not None:
            at, width = _serial_field(volume.read_at(0, 512))
            serial = secrets.token_bytes(width)
            for copy in copies:
                device.write_at(start + copy + at, serial)
            changed.append(f"partition {number}: new filesystem serial")
        elif ext.detect(volume):
            ext_spans.append((number, start, size))
    device.sync()
    for number, start, size in ext_spans:
        _ext_new_uuid(device.path, start, size)
        changed.append(f"partition {number}: new ext filesystem UUID")
    return changed
