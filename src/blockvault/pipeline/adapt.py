"""Adapt a copied disk to a larger target: grow one partition and its filesystem.

Shared by clone and restore. ``plan_grow`` runs before a byte is written (every
refusal happens there); ``apply_grow`` runs after the data is on the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockvault.disk.device import Device
from blockvault.disk.fs.resize import can_grow, grow_filesystem
from blockvault.disk.plan import grown_table, last_partition
from blockvault.disk.table import PartitionTable, gpt, mbr
from blockvault.errors import UsageError

__all__ = ["GrowPlan", "apply_grow", "plan_grow"]


@dataclass(frozen=True)
class GrowPlan:
    table: PartitionTable | None  # the table to write; None: a filesystem on the whole target
    number: int
    offset: int
    size: int  # the partition's new size
    fs: str


def plan_grow(
    table: PartitionTable | None,
    filesystems: dict[int, str],
    source_size: int,
    target_size: int,
    number: int | None,
) -> GrowPlan:
    """What growing partition ``number`` (None: the last one) on the target means."""
    if target_size <= source_size:
        raise UsageError(
            f"the target ({target_size} bytes) is not larger than the source ({source_size}); "
            "nothing to grow"
        )
    if table is None:
        fs = filesystems.get(1, "")
        plan = GrowPlan(None, 1, 0, target_size, fs)
    else:
        number = number if number is not None else last_partition(table)
        new = grown_table(table, target_size, number)
        part = new.partition(number)
        assert part is not None
        plan = GrowPlan(new, number, part.start, part.size, filesystems.get(number, ""))
    reason = can_grow(plan.fs)
    if reason:
        raise UsageError(f"cannot grow partition {plan.number}: {reason}; nothing was written")
    return plan


def apply_grow(device: Device, plan: GrowPlan, boot_sector: bytes) -> str:
    """Write the grown table, then grow the filesystem into it; a report line."""
    if plan.table is not None:
        if plan.table.kind == "gpt":
            writes = gpt.build(plan.table, device.size, protective=True, boot_sector=boot_sector)
        else:
            writes = mbr.build(plan.table, device.size, boot_sector=boot_sector)
        for offset, data in writes:
            device.write_at(offset, data)
    device.sync()
    done = grow_filesystem(device.path, plan.offset, plan.size, plan.fs)
    return f"partition {plan.number}: {done}"
