"""Write a partition table onto a device, for that device's size."""

from __future__ import annotations

from blockvault.disk.device import Device
from blockvault.disk.table import PartitionTable, gpt, mbr

__all__ = ["write_table"]


def write_table(device: Device, table: PartitionTable, boot_sector: bytes | None = None) -> None:
    """Write ``table`` (a GPT's backup at the device's end) keeping ``boot_sector``'s boot
    code, by default the one on the device now."""
    if boot_sector is None:
        boot_sector = device.read_at(0, table.sector_size)
    if table.kind == "gpt":
        writes = gpt.build(table, device.size, protective=True, boot_sector=boot_sector)
    else:
        writes = mbr.build(table, device.size, boot_sector=boot_sector)
    for offset, data in writes:
        device.write_at(offset, data)
