"""GPT: damaged copies, restore onto a larger disk, sector size detection, round trips."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockvault.disk.device import open_device
from blockvault.disk.table import Partition, PartitionTable, gpt, mbr
from blockvault.errors import PartitionTableError

from .diskimages import (
    MiB,
    SparseDisk,
    apply,
    blank,
    copy,
    corrupt,
    expected_partitions,
    first_sector,
    loop_device,
    need,
    parse_file,
    read_bytes,
    run,
    same_files,
    seen,
)
from .scenarios import Made, Scenario, scenario, scenario_params


@pytest.fixture(params=scenario_params("gpt"))
def made(request: pytest.FixtureRequest, scenario_image: Callable[[Scenario], Made]) -> Made:
    return scenario_image(request.param)


def damaged_copy(made: Made, tmp_path: Path, *offsets: int) -> Path:
    image = copy(made.image, tmp_path / "damaged.img")
    for offset in offsets:
        corrupt(image, offset)
    return image


def last_lba_offset(made: Made) -> int:
    return made.scenario.disk_size - made.scenario.sector_size


# Offsets inside the structures: the disk GUID in a header, the name of entry 1.
HEADER_GUID = gpt.c_gpt.gpt_header.fields["disk_guid"].offset
ENTRY1_NAME = gpt.c_gpt.gpt_entry.fields["partition_name"].offset + 4


def test_damaged_primary_header_falls_back_to_the_backup(made: Made, tmp_path: Path) -> None:
    ss = made.scenario.sector_size
    image = damaged_copy(made, tmp_path, ss + HEADER_GUID)
    table = parse_file(image, gpt.parse, ss)
    assert table is not None
    assert seen(table.partitions) == made.expected
    assert table.disk_id == made.oracle["id"].lower()
    assert table.note is not None and "primary GPT damaged (header CRC32" in table.note


def test_damaged_primary_entries_fall_back_to_the_backup(made: Made, tmp_path: Path) -> None:
    ss = made.scenario.sector_size
    image = damaged_copy(made, tmp_path, 2 * ss + ENTRY1_NAME)
    table = parse_file(image, gpt.parse, ss)
    assert table is not None
    assert seen(table.partitions) == made.expected
    assert table.note is not None and "entry array CRC32" in table.note


def test_both_copies_damaged_raise(made: Made, tmp_path: Path) -> None:
    ss = made.scenario.sector_size
    image = damaged_copy(made, tmp_path, ss + HEADER_GUID, last_lba_offset(made) + HEADER_GUID)
    with pytest.raises(PartitionTableError, match="both copies are damaged") as caught:
        parse_file(image, gpt.parse, ss)
    assert str(image) in str(caught.value)


def test_damaged_backup_is_noted(made: Made, tmp_path: Path) -> None:
    ss = made.scenario.sector_size
    image = damaged_copy(made, tmp_path, last_lba_offset(made) + HEADER_GUID)
    table = parse_file(image, gpt.parse, ss)
    assert table is not None
    assert seen(table.partitions) == made.expected
    assert table.note is not None and "backup GPT" in table.note


def test_grown_disk_notes_the_misplaced_backup(made: Made, tmp_path: Path) -> None:
    image = copy(made.image, tmp_path / "grown.img", 2 * made.scenario.disk_size)
    table = parse_file(image, gpt.parse, made.scenario.sector_size)
    assert table is not None
    assert seen(table.partitions) == made.expected
    assert table.note is not None and "not at the last LBA" in table.note


def test_build_for_a_larger_disk_matches_the_tools(made: Made, tmp_path: Path) -> None:
    """Ours equals what sgdisk -e or sfdisk --relocate writes, and sgdisk finds no problem."""
    need("sgdisk", "sfdisk", "cmp")
    ss, size = made.scenario.sector_size, made.scenario.disk_size + 40 * MiB
    table = parse_file(made.image, gpt.parse, ss)
    assert table is not None

    ours = copy(made.image, tmp_path / "ours.img", size)
    apply(ours, gpt.build(table, size, protective=True, boot_sector=first_sector(ours, ss)))
    theirs = copy(made.image, tmp_path / "theirs.img", size)
    relocate = (
        ["sgdisk", "-e"]
        if made.scenario.tool == "sgdisk"
        else ["sfdisk", "--relocate", "gpt-bak-std"]
    )

    def check(ours_target: str, theirs_target: str) -> None:
        run(*relocate, theirs_target)
        assert "No problems found" in run("sgdisk", "-v", ours_target)
        assert expected_partitions(ours_target) == made.expected

    if ss == 512:
        check(str(ours), str(theirs))
    else:
        with loop_device(ours, ss) as ours_dev, loop_device(theirs, ss) as theirs_dev:
            check(ours_dev, theirs_dev)
    assert same_files(ours, theirs)
    # and the table we read back from the larger disk is the source's, usable range aside
    grown = parse_file(ours, gpt.parse, ss)
    assert grown is not None and grown.note is None
    assert grown.partitions == table.partitions
    assert grown.last_usable_lba == size // ss - 2 - (table.entry_count * table.entry_size) // ss


def test_backup_area_holds_the_tools_backup(made: Made) -> None:
    ss = made.scenario.sector_size
    table = parse_file(made.image, gpt.parse, ss)
    assert table is not None
    offset, length = gpt.backup_area(table, made.scenario.disk_size)
    assert offset + length == made.scenario.disk_size
    assert read_bytes(made.image, offset + length - ss, 8) == b"EFI PART"
    assert read_bytes(made.image, offset, length - ss) == read_bytes(
        made.image, 2 * ss, length - ss
    )


def test_detect_sector_size(made: Made, tmp_path: Path) -> None:
    ss = made.scenario.sector_size
    with open_device(made.image) as disk:
        assert gpt.detect_sector_size(disk) == ss
    image = damaged_copy(made, tmp_path, ss + HEADER_GUID)
    with open_device(image) as disk:
        assert gpt.detect_sector_size(disk) == ss


def test_the_protective_mbr_is_no_mbr_table(made: Made) -> None:
    assert parse_file(made.image, mbr.parse, made.scenario.sector_size) is None


@pytest.mark.root
def test_wrong_sector_size_says_which_is_right(scenario_image: Callable[[Scenario], Made]) -> None:
    made = scenario_image(
        next(p.values[0] for p in scenario_params("gpt") if p.id.endswith("4096"))
    )
    with pytest.raises(PartitionTableError, match="written for 4096-byte sectors"):
        parse_file(made.image, gpt.parse, 512)


def test_fresh_protective_mbr_is_the_one_the_tools_write(
    scenario_image: Callable[[Scenario], Made], tmp_path: Path
) -> None:
    """sgdisk's when the CHS of the last LBA fits (64 MiB); past 8 GiB both tools agree."""
    need("sfdisk")
    small = scenario_image(scenario("gpt-sgdisk-512"))
    assert gpt.protective_mbr(small.scenario.disk_size, 512) == first_sector(small.image, 512)
    size = 9 * 1024 * MiB
    image = blank(tmp_path / "large.img", size)
    run("sfdisk", "--quiet", image, stdin="label: gpt\n")
    assert gpt.protective_mbr(size, 512) == first_sector(image, 512)


def test_hybrid_mbr_is_kept(scenario_image: Callable[[Scenario], Made], tmp_path: Path) -> None:
    need("sgdisk")
    made = scenario_image(
        next(p.values[0] for p in scenario_params("gpt") if p.id == "gpt-sgdisk-512")
    )
    image = copy(made.image, tmp_path / "hybrid.img")
    run("sgdisk", "-h", "1:EE", image)
    boot = first_sector(image, 512)
    assert gpt.protective_mbr(2 * made.scenario.disk_size, 512, boot) == boot
    assert parse_file(image, mbr.parse, 512) is None
    table = parse_file(image, gpt.parse, 512)
    assert table is not None and seen(table.partitions) == made.expected


def test_no_protective_mbr_is_no_gpt(tmp_path: Path) -> None:
    image = blank(tmp_path / "zero.img", 4 * MiB)
    assert parse_file(image, gpt.parse, 512) is None
    with open_device(image) as disk:
        assert gpt.detect_sector_size(disk) is None


def small_table(**changes: Any) -> PartitionTable:
    table = PartitionTable(
        kind="gpt",
        sector_size=512,
        disk_id=str(uuid.UUID(int=1)),
        partitions=(
            Partition(
                1, 1 * MiB, 4 * MiB, str(uuid.UUID(int=2)), name="a", uuid=str(uuid.UUID(int=3))
            ),
        ),
        first_usable_lba=2048,
        entry_count=128,
        entry_size=128,
    )
    return dataclasses.replace(table, **changes)


def test_min_disk_size_is_the_smallest_that_builds() -> None:
    table = small_table()
    smallest = gpt.min_disk_size(table)
    assert smallest == (2048 + 8192 + 33) * 512
    gpt.build(table, smallest)
    with pytest.raises(ValueError, match="needs a disk of"):
        gpt.build(table, smallest - 512)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "mbr"}, "cannot write a mbr table as a GPT"),
        ({"first_usable_lba": 20}, "overlaps the primary entry array"),
        ({"entry_count": 0, "entry_size": 100}, "entry size 100"),
    ],
)
def test_build_refuses_bad_tables(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gpt.build(small_table(**change), 64 * MiB)


def test_build_refuses_bad_partitions() -> None:
    good = small_table().partitions[0]
    for bad, message in [
        (Partition(129, good.start, good.size, good.type, uuid=good.uuid), "not a free entry"),
        (Partition(1, good.start + 1, good.size, good.type, uuid=good.uuid), "whole 512-byte"),
        (Partition(1, 512, good.size, good.type, uuid=good.uuid), "leaves the usable range"),
        (Partition(1, good.start, good.size, good.type), "no unique GUID"),
        (Partition(1, good.start, good.size, good.type, uuid=good.uuid, name="x" * 37), "36 UTF"),
    ]:
        with pytest.raises(ValueError, match=message):
            gpt.build(small_table(partitions=(bad,)), 64 * MiB)


# --- property: parse(build(table)) == table for any valid table ---------------------------

NAME = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=36
).filter(lambda s: len(s.encode("utf-16-le")) <= 72)


@st.composite
def gpt_tables(draw: st.DrawFn) -> tuple[PartitionTable, int]:
    ss = draw(st.sampled_from([512, 4096]))
    entry_size = draw(st.sampled_from([128, 256]))
    entry_count = draw(st.integers(1, 256))
    array_blocks = -(-entry_count * entry_size // ss)
    first_usable = 2 + array_blocks + draw(st.integers(0, 2048))
    blocks = first_usable + array_blocks + 2 + draw(st.integers(0, 2**40))
    last_usable = blocks - 2 - array_blocks
    n = draw(st.integers(0, min(entry_count, 8, (last_usable + 2 - first_usable) // 2)))
    bounds = sorted(
        draw(st.sets(st.integers(first_usable, last_usable + 1), min_size=2 * n, max_size=2 * n))
    )
    numbers = draw(st.lists(st.integers(1, entry_count), min_size=n, max_size=n, unique=True))
    partitions = []
    for i, number in enumerate(numbers):
        first, end = bounds[2 * i], bounds[2 * i + 1]
        type_guid = draw(st.uuids().filter(lambda u: u.int != 0))
        partitions.append(
            Partition(
                number=number,
                start=first * ss,
                size=(end - first) * ss,
                type=str(type_guid),
                name=draw(NAME),
                uuid=str(draw(st.uuids())),
                attributes=draw(st.integers(0, 2**64 - 1)),
            )
        )
    table = PartitionTable(
        kind="gpt",
        sector_size=ss,
        disk_id=str(draw(st.uuids())),
        partitions=tuple(sorted(partitions, key=lambda p: p.number)),
        first_usable_lba=first_usable,
        last_usable_lba=last_usable,
        entry_count=entry_count,
        entry_size=entry_size,
    )
    return table, blocks * ss


@settings(max_examples=100, deadline=None)
@given(gpt_tables())
def test_parse_of_build_is_the_table(case: tuple[PartitionTable, int]) -> None:
    table, disk_size = case
    disk = SparseDisk(disk_size, gpt.build(table, disk_size, protective=True))
    assert gpt.detect_sector_size(disk) == table.sector_size
    assert gpt.parse(disk, table.sector_size) == table
