"""Plan a partition table for a disk of another size than the one it was read from.

Growing: one partition's end moves to the end of the free space after it (the disk's
end for the last one); nothing else moves, so every other byte lands where it was.
When partitions follow it, they move to the disk's end first (``moved_layout``).
Shrinking onto a smaller disk (``shrunk_layout``): the partitions are laid out anew.
Both give a ``LayoutPlan`` (old place -> new place, keep/grow/shrink) that
pipeline/adapt.py applies. Pure planning: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from blockvault.disk.table import Partition, PartitionTable
from blockvault.errors import UsageError

__all__ = [
    "DoesNotFit",
    "LayoutPlan",
    "Placement",
    "grown_table",
    "last_partition",
    "moved_layout",
    "shrunk_layout",
]


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


MIB = 1024 * 1024
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"  # GRUB's boot.img points into it


class DoesNotFit(UsageError):
    """The partitions, each at its filesystem's minimum, need more than the target has."""

    def __init__(self, missing: int, have: int, why: str = "") -> None:
        super().__init__(
            f"the target is too small: it has {have} bytes, and {missing} bytes are "
            "missing even with every shrinkable filesystem at its minimum"
            f"{'; ' + why if why else ''}; nothing was written",
        )
        self.have = have
        self.missing = missing


@dataclass(frozen=True)
class Placement:
    """Where one source partition lands, and what happens to its filesystem."""

    number: int
    old_start: int
    old_size: int
    start: int
    size: int
    action: str  # "keep" (same size), "grow" or "shrink"

    @property
    def shift(self) -> int:
        return self.start - self.old_start


@dataclass(frozen=True)
class LayoutPlan:
    """A new table for the target and, per partition, its old and new place."""

    table: PartitionTable
    placements: tuple[Placement, ...]

    @property
    def first_start(self) -> int:
        """Where the first partition starts: every boot area byte before it is kept."""
        return min(p.start for p in self.placements)


def _up(n: int) -> int:
    return -(-n // MIB) * MIB


def _down(n: int) -> int:
    return n // MIB * MIB


def _layout(
    table: PartitionTable, disk_size: int, sizes: dict[int, int], starts: dict[int, int]
) -> LayoutPlan:
    placements = []
    parts = []
    for p in table.partitions:
        if not p.is_data:
            parts.append(p)
            continue
        size, start = sizes[p.number], starts[p.number]
        action = "keep" if size == p.size else ("grow" if size > p.size else "shrink")
        if p.type == BIOS_BOOT_GUID and start != p.start:
            raise UsageError(
                f"the BIOS boot partition {p.number} would move (GRUB's boot code points at "
                "its sectors); nothing was written"
            )
        placements.append(Placement(p.number, p.start, p.size, start, size, action))
        parts.append(replace(p, start=start, size=size))
    last_lba = _usable_end(table, disk_size) // table.sector_size - 1
    new = replace(
        table,
        partitions=tuple(parts),
        last_usable_lba=last_lba if table.kind == "gpt" else table.last_usable_lba,
    )
    return LayoutPlan(new, tuple(placements))


def _plain(table: PartitionTable, what: str) -> list[Partition]:
    if any(p.kind in ("logical", "extended") for p in table.partitions):
        raise UsageError(
            f"{what}: moving MBR logical partitions is not supported; nothing was written"
        )
    return sorted(table.data_partitions, key=lambda p: p.start)


def shrunk_layout(
    table: PartitionTable, disk_size: int, minimums: dict[int, int | None]
) -> LayoutPlan:
    """A layout of ``table``'s partitions that fits a disk of ``disk_size`` bytes.

    Partitions keep their order; the first keeps its start (the boot code before it
    and a BIOS boot partition there stay where boot.img expects them); each next one
    starts on the next MiB. ``minimums[n]`` None: partition n keeps its size (its
    filesystem cannot shrink); else its filesystem's smallest size. The shrinkable ones
    share the room left in proportion to their original sizes, never below their
    minimum nor above their original size. Raises DoesNotFit with the missing bytes.
    """
    parts = _plain(table, "the target is smaller than the source")
    base, end = parts[0].start, _usable_end(table, disk_size)
    fixed = {p.number for p in parts if minimums.get(p.number) is None}

    def footprint(sizes: dict[int, int]) -> int:  # each next start is MiB aligned
        return sum(_up(sizes[p.number]) for p in parts[:-1]) + sizes[parts[-1].number]

    floor = {
        p.number: p.size if p.number in fixed else min(_up(minimums[p.number] or 0), p.size)
        for p in parts
    }
    if base + footprint(floor) > end:
        raise DoesNotFit(base + footprint(floor) - end, disk_size)
    sizes = dict(floor)
    free = {p.number for p in parts} - fixed
    while free:  # share out the room; those held at their minimum or maximum drop out
        room = end - base - footprint({**sizes, **dict.fromkeys(free, 0)})
        total = sum(p.size for p in parts if p.number in free)
        share = {p.number: _down(p.size * room // total) for p in parts if p.number in free}
        held = {n for n in free if share[n] < floor[n]}
        held |= {n for n in free if share[n] >= table.partition(n).size}  # type: ignore[union-attr]
        for n in free:
            part = table.partition(n)
            assert part is not None
            sizes[n] = min(max(share[n], floor[n]), part.size)
        if not held:
            break
        free -= held
    starts, at = {}, base
    for p in parts:
        starts[p.number] = at
        at = _up(at + sizes[p.number])
    assert starts[parts[-1].number] + sizes[parts[-1].number] <= end
    return _layout(table, disk_size, sizes, starts)


def moved_layout(table: PartitionTable, disk_size: int, number: int) -> LayoutPlan:
    """Partition ``number`` grown, the partitions after it moved to the disk's end
    (sizes and order kept, starts MiB aligned)."""
    parts = _plain(table, "other partitions follow the one to grow")
    part = table.partition(number)
    if part is None or not part.is_data:
        have = ", ".join(str(p.number) for p in parts)
        raise UsageError(f"the disk has no partition {number} to grow (it has {have})")
    sizes = {p.number: p.size for p in parts}
    starts = {p.number: p.start for p in parts}
    at = _usable_end(table, disk_size)
    for p in reversed(parts):
        if p.start <= part.start:
            break
        starts[p.number] = _down(at - p.size)
        at = starts[p.number]
    sizes[number] = at - part.start
    if sizes[number] <= part.size:
        raise UsageError(f"partition {number} has no room to grow on this disk")
    return _layout(table, disk_size, sizes, starts)
