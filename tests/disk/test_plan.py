"""disk/plan.py: layouts for smaller disks and for growing a partition others follow.

Pure planning on tables built here; the plans' tables are then checked by sgdisk -v
after gpt.build writes them onto a file of the target's size.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from blockvault.disk.plan import BIOS_BOOT_GUID, DoesNotFit, moved_layout, shrunk_layout
from blockvault.disk.table import Partition, PartitionTable, gpt
from blockvault.errors import UsageError
from tests.conftest import need_tools, sh

MiB = 1024 * 1024
LINUX = "0fc63daf-8483-4772-8e79-3d69c47d8e4f"


def _table(*sizes: int, first: int = MiB, bios: bool = False) -> PartitionTable:
    parts, at = [], first
    for n, size in enumerate(sizes, 1):
        kind = BIOS_BOOT_GUID if bios and n == 1 else LINUX
        parts.append(Partition(n, at, size, kind, uuid=f"00000000-0000-0000-0000-00000000000{n}"))
        at += size
    return PartitionTable(
        "gpt",
        512,
        "11111111-2222-3333-4444-555555555555",
        tuple(parts),
        first_usable_lba=34,
        last_usable_lba=(at + MiB) // 512 - 34,
        entry_count=128,
        entry_size=128,
    )


def _verified(table: PartitionTable, size: int, tmp_path: Path) -> None:
    need_tools("sgdisk")
    image = tmp_path / "plan.img"
    with open(image, "wb") as f:
        f.truncate(size)
        for offset, data in gpt.build(table, size, protective=True):
            f.seek(offset)
            f.write(data)
    assert "No problems found" in sh("sgdisk", "-v", image)


def test_shrunk_layout_is_proportional_aligned_and_fits(tmp_path: Path) -> None:
    table = _table(MiB, 8 * MiB, 40 * MiB, 20 * MiB, bios=True)
    minimums = {1: None, 2: None, 3: 6 * MiB, 4: 6 * MiB}
    plan = shrunk_layout(table, 48 * MiB, minimums)
    by = {p.number: p for p in plan.placements}
    assert (by[1].start, by[1].size, by[1].action) == (MiB, MiB, "keep")
    assert by[2].size == 8 * MiB and by[2].start == 2 * MiB
    assert by[3].action == by[4].action == "shrink"
    assert by[3].size > by[4].size >= 6 * MiB  # in proportion to 40 : 20
    assert all(p.start % MiB == 0 for p in plan.placements)
    starts = sorted(plan.placements, key=lambda p: p.start)
    assert all(a.start + a.size <= b.start for a, b in pairwise(starts))
    _verified(plan.table, 48 * MiB, tmp_path)


def test_shrunk_layout_missing_bytes() -> None:
    table = _table(8 * MiB, 40 * MiB)
    with pytest.raises(DoesNotFit, match="bytes are missing") as exc:
        shrunk_layout(table, 20 * MiB, {1: None, 2: 16 * MiB})
    # 1 MiB gap + 8 MiB kept + 16 MiB minimum + GPT backup (33 sectors) on 20 MiB
    assert exc.value.missing == MiB + 8 * MiB + 16 * MiB + 33 * 512 - 20 * MiB


def test_moved_layout_grows_the_middle_partition(tmp_path: Path) -> None:
    table = _table(8 * MiB, 10 * MiB, 5 * MiB)
    plan = moved_layout(table, 64 * MiB, 1)
    by = {p.number: p for p in plan.placements}
    assert by[1].action == "grow" and by[1].start == MiB
    assert by[2].size == 10 * MiB and by[3].size == 5 * MiB
    assert by[1].start + by[1].size == by[2].start and by[2].start + by[2].size == by[3].start
    assert by[3].start + by[3].size <= 64 * MiB - 33 * 512
    _verified(plan.table, 64 * MiB, tmp_path)


def test_bios_boot_partition_never_moves() -> None:
    table = _table(8 * MiB, MiB, 8 * MiB, bios=False)
    table = PartitionTable(
        table.kind,
        table.sector_size,
        table.disk_id,
        tuple(
            Partition(p.number, p.start, p.size, BIOS_BOOT_GUID if p.number == 2 else p.type)
            for p in table.partitions
        ),
        table.first_usable_lba,
        table.last_usable_lba,
        table.entry_count,
        table.entry_size,
    )
    with pytest.raises(UsageError, match="BIOS boot partition 2 would move"):
        moved_layout(table, 64 * MiB, 1)


def test_mbr_logical_partitions_are_refused() -> None:
    parts = (
        Partition(1, MiB, 8 * MiB, "0x83", kind="primary"),
        Partition(2, 9 * MiB, 20 * MiB, "0x05", kind="extended"),
        Partition(5, 10 * MiB, 19 * MiB, "0x83", kind="logical", ebr_offset=9 * MiB),
    )
    table = PartitionTable("mbr", 512, "0x12345678", parts)
    with pytest.raises(UsageError, match="MBR logical partitions"):
        shrunk_layout(table, 20 * MiB, {1: None, 5: 4 * MiB})
    with pytest.raises(UsageError, match="MBR logical partitions"):
        moved_layout(table, 64 * MiB, 1)
