"""Plan a partition table for a disk of another size than the one it was read from.

Growing: one partition's end moves to the end of the free space after it (the disk's
end for the last one); nothing else moves, so every other byte lands where it was.
"""

from __future__ import annotations

from dataclasses import replace

from blockvault.disk.table import PartitionTable
from blockvault.errors import UsageError

__all__ = ["grown_table", "last_partition"]


def last_partition(table: PartitionTable) -> int:
    """The number of the data partition that ends last on the disk."""
    parts = table.data_partitions
    if not parts:
        raise UsageError("the disk has no partition to grow")
    return max(parts, key=lambda p: p.end).number


def _usable_end(table: PartitionTable, disk_size: int) -> int:
    """Byte offset just past the last sector a partition may use on a disk of this size."""
    ss = table.sector_size
    if table.kind == "gpt":
        array = -(-table.entry_count * table.entry_size // ss)  # backup entries + header
        return disk_size - (array + 1) * ss
    return disk_size - disk_size % ss


def grown_table(table: PartitionTable, disk_size: int, number: int) -> PartitionTable:
    """``table`` with partition ``number`` grown over the free space after it.

    Refuses a logical MBR partition (its extended container would have to move too)
    and a partition followed directly by another one.
    """
    part = table.partition(number)
    if part is None or not part.is_data:
        have = ", ".join(str(p.number) for p in table.data_partitions)
        raise UsageError(f"the disk has no partition {number} to grow (it has {have})")
    if part.kind == "logical":
        raise UsageError(
            f"partition {number} is a logical MBR partition; growing it is not supported"
        )
    after = [p.start for p in table.partitions if p.start >= part.end and p is not part]
    end = min(after, default=_usable_end(table, disk_size))
    if end <= part.end:
        raise UsageError(
            f"partition {number} has no free space after it to grow into "
            "(only growing into free space after a partition is supported)"
        )
    grown = replace(part, size=end - part.start)
    parts = tuple(grown if p is part else p for p in table.partitions)
    last_lba = _usable_end(table, disk_size) // table.sector_size - 1
    return replace(
        table,
        partitions=parts,
        last_usable_lba=last_lba if table.kind == "gpt" else table.last_usable_lba,
    )
