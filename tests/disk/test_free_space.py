"""Free extents and a new entry in them: tables written by sfdisk, checked by sfdisk/sgdisk.

Expected free space comes from ``sfdisk --list-free``; the table we build with the
new entry must pass ``sgdisk -v`` / ``sfdisk --verify`` and list the entry where the
plan put it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.free_space import (
    GPT_LINUX,
    GPT_MSDATA,
    entry_type,
    free_extents,
    place_partition,
)
from blockvault.disk.table import PartitionTable, gpt, mbr
from blockvault.disk.table.probe import read_table
from blockvault.errors import UsageError
from tests.conftest import sh

MiB = 1024 * 1024


def _disk(path: Path, size: int, script: str) -> PartitionTable:
    with open(path, "wb") as f:
        f.truncate(size)
    sh("sfdisk", "-q", path, input=script)
    with open_device(path) as device:
        table = read_table(device)
    assert table is not None
    return table


def _sfdisk_free(path: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each free area sfdisk reports."""
    rows = []
    for line in sh("sfdisk", "--list-free", "--bytes", path).splitlines():
        cells = line.split()
        if len(cells) == 4 and cells[0].isdigit():
            rows.append((int(cells[0]) * 512, int(cells[2]) * 512))
    return rows


def _write(path: Path, table: PartitionTable) -> None:
    with open_device(path, write=True) as device:
        boot = device.read_at(0, 512)
        if table.kind == "gpt":
            writes = gpt.build(table, device.size, protective=True, boot_sector=boot)
        else:
            writes = mbr.build(table, device.size, boot_sector=boot)
        for offset, data in writes:
            device.write_at(offset, data)


GAPPED = "start=2048, size=8192\nstart=20480, size=20480\nstart=61440, size=4096\n"


@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_free_extents_match_sfdisk(label: str, tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    table = _disk(path, 48 * MiB, f"label: {label}\n" + GAPPED)
    ours = [(f.start, f.size) for f in free_extents(table, 48 * MiB) if f.size >= MiB]
    assert ours == _sfdisk_free(path)


def test_first_fit_skips_small_gap_and_writes_valid_gpt(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    table = _disk(path, 48 * MiB, "label: gpt\n" + GAPPED)
    # gaps: 5-10 MiB (5 MiB), 20-30 MiB (10 MiB), 32-48 MiB (about 16 MiB)
    plan = place_partition(table, 48 * MiB, 7 * MiB, type=GPT_LINUX, name="copy", uuid=GPT_MSDATA)
    assert (plan.partition.number, plan.partition.start, plan.partition.size) == (
        4,
        20 * MiB,
        7 * MiB,
    )
    _write(path, plan.table)
    assert "No problems found" in sh("sgdisk", "-v", path)
    parts = json.loads(sh("sfdisk", "--json", path))["partitiontable"]["partitions"]
    new = parts[-1]
    assert (new["start"], new["size"], new["name"]) == (20 * 2048, 7 * 2048, "copy")
    assert new["type"].lower() == GPT_LINUX and [p["start"] for p in parts[:3]] == [
        2048,
        20480,
        61440,
    ]


def test_fill_takes_the_whole_extent(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    table = _disk(path, 48 * MiB, "label: dos\n" + GAPPED)
    plan = place_partition(table, 48 * MiB, 3 * MiB, type="0x83", fill=True)
    assert (plan.partition.start, plan.partition.end) == (5 * MiB, 10 * MiB)
    _write(path, plan.table)
    sh("sfdisk", "--verify", path)
    parts = json.loads(sh("sfdisk", "--json", path))["partitiontable"]["partitions"]
    assert (parts[-1]["start"], parts[-1]["size"], parts[-1]["type"]) == (10240, 10240, "83")


def test_no_room_says_largest_and_needed(tmp_path: Path) -> None:
    table = _disk(tmp_path / "d.img", 48 * MiB, "label: gpt\n" + GAPPED)
    with pytest.raises(UsageError) as caught:
        place_partition(table, 48 * MiB, 20 * MiB, type=GPT_LINUX)
    message = str(caught.value)
    assert f"needs {20 * MiB} bytes" in message
    largest = max(size for _, size in _sfdisk_free(tmp_path / "d.img"))
    assert f"holds {largest} bytes" in message


def test_mbr_without_free_primary_entry_is_refused(tmp_path: Path) -> None:
    script = "label: dos\n" + "".join(f"start={2048 + i * 4096}, size=2048\n" for i in range(4))
    table = _disk(tmp_path / "d.img", 48 * MiB, script)
    with pytest.raises(UsageError, match="4 primary MBR entries"):
        place_partition(table, 48 * MiB, MiB, type="0x83")


def test_extended_partition_is_not_free(tmp_path: Path) -> None:
    script = "label: dos\nstart=2048, size=8192\nstart=10240, size=40960, type=5\n"
    script += "start=12288, size=4096\n"
    path = tmp_path / "d.img"
    table = _disk(path, 48 * MiB, script)
    extents = free_extents(table, 48 * MiB)
    assert all(f.end <= 5 * MiB or f.start >= 25 * MiB for f in extents)
    plan = place_partition(table, 48 * MiB, 4 * MiB, type="0x83")
    assert (plan.partition.number, plan.partition.start) == (3, 25 * MiB)
    _write(path, plan.table)
    sh("sfdisk", "--verify", path)
    parts = json.loads(sh("sfdisk", "--json", path))["partitiontable"]["partitions"]
    assert len(parts) == 4  # the logical partition survived the rebuilt chain


def test_entry_type_between_table_kinds() -> None:
    assert entry_type("0x83", "ext4", "gpt") == GPT_LINUX
    assert entry_type(GPT_MSDATA, "fat32", "mbr") == "0x0c"
    assert entry_type(GPT_MSDATA, "ntfs", "mbr") == "0x07"
    assert entry_type(GPT_LINUX, "ext4", "gpt") == GPT_LINUX
    assert entry_type(None, "fat16", "gpt") == GPT_MSDATA
    assert entry_type(None, "ext2", "mbr") == "0x83"
