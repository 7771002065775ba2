"""Room for one more partition: the free extents of a table and a new entry in one.

Glossary:
  usable range  the bytes a partition may occupy: GPT from ``first_usable_lba`` to
                just before the backup entry array at the end of *this* disk (so a
                table read from a disk that was enlarged gains the new space); MBR
                from LBA 1 to the end, within what 32-bit LBAs address.
  free extent   a run of the usable range no partition covers. An MBR extended
                partition counts as covered: a new entry is a primary one.

Pure planning, nothing is written: ``place_partition`` returns the table to write.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from blockvault.disk.table import Partition, PartitionTable, gpt
from blockvault.disk.table.mbr import MAX_LBA
from blockvault.errors import UsageError

__all__ = ["ALIGN", "FreeExtent", "Placement", "entry_type", "free_extents", "place_partition"]

ALIGN = 1024 * 1024  # where every current partitioning tool starts a partition

GPT_LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
GPT_MSDATA = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_LVM = "e6d6d379-f507-44c2-a23c-238f2a3df928"
GPT_RAID = "a19d880f-05fc-4d3b-a006-743f0f84911e"
# MBR type byte -> GPT type GUID, for a partition that moves between table kinds
MBR_TO_GPT = {
    "0x83": GPT_LINUX,
    "0x82": GPT_SWAP,
    "0xef": GPT_ESP,
    "0x8e": GPT_LVM,
    "0xfd": GPT_RAID,
    **{t: GPT_MSDATA for t in ("0x01", "0x04", "0x06", "0x07", "0x0b", "0x0c", "0x0e")},
}
GPT_TO_MBR = {
    GPT_LINUX: "0x83",
    GPT_SWAP: "0x82",
    GPT_ESP: "0xef",
    GPT_LVM: "0x8e",
    GPT_RAID: "0xfd",
}
MBR_BY_FS = {"fat12": "0x01", "fat16": "0x0e", "fat32": "0x0c", "ntfs": "0x07", "swap": "0x82"}


@dataclass(frozen=True)
class FreeExtent:
    start: int  # byte offset on the disk
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Placement:
    table: PartitionTable  # the target's table with the new entry added
    partition: Partition  # the new entry
    extent: FreeExtent  # the free extent it went into


def _usable(table: PartitionTable, disk_size: int) -> tuple[int, int]:
    ss = table.sector_size
    if table.kind == "gpt":
        end, _ = gpt.backup_area(table, disk_size)
        return table.first_usable_lba * ss, end
    return ss, min(disk_size - disk_size % ss, (MAX_LBA + 1) * ss)


def free_extents(table: PartitionTable, disk_size: int) -> list[FreeExtent]:
    """The runs of the usable range that no partition covers, in disk order."""
    start, end = _usable(table, disk_size)
    free = []
    for p in sorted(table.partitions, key=lambda p: p.start):
        if p.kind == "logical":
            continue  # inside the extended partition, which covers it
        if p.start > start:
            free.append(FreeExtent(start, min(p.start, end) - start))
        start = max(start, p.end)
    if end > start:
        free.append(FreeExtent(start, end - start))
    return [f for f in free if f.size > 0]


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _free_number(table: PartitionTable) -> int:
    taken = {p.number for p in table.partitions}
    limit = (table.entry_count or gpt.DEFAULT_ENTRY_COUNT) if table.kind == "gpt" else 4
    free = [n for n in range(1, limit + 1) if n not in taken]
    if not free:
        kind = "all 4 primary MBR entries" if table.kind == "mbr" else f"all {limit} GPT entries"
        raise UsageError(f"{kind} are in use: there is no entry left for a new partition")
    return free[0]


def entry_type(source_type: str | None, fs: str, table_kind: str) -> str:
    """The type of the new entry in a ``table_kind`` table: the source's own when it is
    of that kind, else its counterpart, else one that suits the filesystem ``fs``."""
    is_guid = source_type is not None and len(source_type) == 36
    if table_kind == "gpt":
        if is_guid:
            return str(source_type)
        if source_type in MBR_TO_GPT:
            return MBR_TO_GPT[source_type]
        if fs.startswith(("fat", "ntfs")):
            return GPT_MSDATA
        return GPT_SWAP if fs == "swap" else GPT_LINUX
    if source_type is not None and source_type.startswith("0x"):
        return source_type
    if source_type in GPT_TO_MBR:
        return GPT_TO_MBR[source_type]
    return MBR_BY_FS.get(fs, "0x83" if fs.startswith("ext") else "0xda")


def place_partition(
    table: PartitionTable,
    disk_size: int,
    need: int,
    *,
    type: str,
    name: str | None = None,
    uuid: str | None = None,
    attributes: int = 0,
    fill: bool = False,
    align: int = ALIGN,
) -> Placement:
    """A new entry of ``need`` bytes (or the whole extent with ``fill``) at the
    ``align``-ed start of the first free extent that holds it.

    Raises UsageError, saying the largest free extent and the size needed, when none
    does, and when the table has no free entry (an MBR's four primary slots).
    """
    ss = table.sector_size
    need = _round_up(need, ss)
    number = _free_number(table)
    largest = 0
    for extent in free_extents(table, disk_size):
        start = _round_up(extent.start, align)
        room = extent.end - start
        largest = max(largest, room)
        if room >= need:
            size = room - room % ss if fill else need
            entry = Partition(
                number=number,
                start=start,
                size=size,
                type=type,
                kind="gpt" if table.kind == "gpt" else "primary",
                name=name if table.kind == "gpt" else None,
                uuid=uuid if table.kind == "gpt" else None,
                attributes=attributes if table.kind == "gpt" else 0,
            )
            parts = tuple(sorted((*table.partitions, entry), key=lambda p: p.number))
            last = _usable(table, disk_size)[1] // ss - 1
            new = replace(
                table,
                partitions=parts,
                last_usable_lba=last if table.kind == "gpt" else table.last_usable_lba,
                note=None,
            )
            return Placement(new, entry, extent)
    raise UsageError(
        f"no free space large enough: the partition needs {need} bytes "
        f"({need / ALIGN:.1f} MiB, {align // 1024} KiB aligned), the largest free extent "
        f"holds {largest} bytes ({largest / ALIGN:.1f} MiB)"
    )
