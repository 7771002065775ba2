"""MBR: boot sectors that are not tables, broken EBR chains, boot code, round trips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockvault.disk.table import Partition, PartitionTable, mbr
from blockvault.disk.table.probe import read_table

from .diskimages import (
    MiB,
    SparseDisk,
    apply,
    blank,
    copy,
    expected_partitions,
    first_sector,
    need,
    parse_file,
    read_bytes,
    run,
    seen,
)
from .scenarios import Made, Scenario, scenario

ENTRY = mbr.ENTRY_OFFSET  # first partition entry in an MBR or EBR
ENTRY_SIZE = len(mbr.c_mbr.mbr_partition)
SIGNATURE = mbr.c_mbr.mbr.fields["signature"].offset


def blkid_pttype(image: Path) -> str:
    """libblkid's verdict on the partition table type, "" for none."""
    proc = run("blkid", "--probe", "--output", "export", image)  # fails when it finds nothing
    fields = dict(line.split("=", 1) for line in proc.splitlines() if "=" in line)
    return fields.get("PTTYPE", "")


@pytest.mark.parametrize(
    "mkfs",
    [
        ["mkfs.ext4", "-q", "-F"],
        ["mkfs.vfat"],
        ["mkfs.vfat", "-F", "32"],
        ["mkfs.vfat", "--mbr=y"],  # a fake entry starting at sector 0
        ["mkntfs", "--quiet", "--fast", "--force"],
    ],
    ids=["ext4", "fat16", "fat32", "fat16-fake-mbr", "ntfs"],
)
def test_a_filesystem_on_the_whole_disk_is_no_table(mkfs: list[str], tmp_path: Path) -> None:
    need(mkfs[0], "blkid")
    image = blank(tmp_path / "whole.img", 64 * MiB)
    run(*mkfs, image)
    assert blkid_pttype(image) == ""
    assert parse_file(image, mbr.parse, 512) is None
    assert parse_file(image, read_table, 512) is None


def test_a_table_over_an_old_fat_boot_sector_wins(tmp_path: Path) -> None:
    """sfdisk keeps the boot code area and with it the FAT BPB; like the kernel and
    sfdisk (not libblkid) we read the table."""
    need("mkfs.vfat", "sfdisk")
    image = blank(tmp_path / "reused.img", 64 * MiB)
    run("mkfs.vfat", image)
    run("sfdisk", "--quiet", image, stdin="label: dos\nstart=2048, type=83\n")
    assert read_bytes(image, 0, 3)[0] == 0xEB  # the FAT jump is still there
    table = parse_file(image, mbr.parse, 512)
    assert table is not None
    assert seen(table.partitions) == expected_partitions(image)


def ebr_offsets(table: PartitionTable) -> list[int]:
    return [p.ebr_offset for p in table.partitions if p.ebr_offset is not None]


@pytest.fixture
def logicals(scenario_image: Callable[[Scenario], Made]) -> Made:
    return scenario_image(scenario("mbr-logicals-512"))


def test_ebr_chain_loop_ends_with_a_note(logicals: Made, tmp_path: Path) -> None:
    table = parse_file(logicals.image, mbr.parse, 512)
    assert table is not None
    last_ebr = ebr_offsets(table)[-1]
    image = copy(logicals.image, tmp_path / "loop.img")
    # link the last EBR back to the first one (offset 0 in the extended partition)
    link = mbr.c_mbr.mbr_partition(sys_ind=0x05, start_sect=0, nr_sects=1)
    apply(image, [(last_ebr + ENTRY + ENTRY_SIZE, link.dumps())])
    looped = parse_file(image, mbr.parse, 512)
    assert looped is not None
    assert looped.partitions == table.partitions
    assert looped.note is not None and "loops back" in looped.note


def test_broken_ebr_ends_the_chain_with_a_note(logicals: Made, tmp_path: Path) -> None:
    table = parse_file(logicals.image, mbr.parse, 512)
    assert table is not None
    second_ebr = ebr_offsets(table)[1]
    image = copy(logicals.image, tmp_path / "broken.img")
    apply(image, [(second_ebr + SIGNATURE, b"\0\0")])
    broken = parse_file(image, mbr.parse, 512)
    assert broken is not None
    assert [p.number for p in broken.partitions] == [1, 2, 3, 4, 5]
    assert broken.note is not None and "no 55AA signature" in broken.note


def test_boot_code_is_kept(logicals: Made, tmp_path: Path) -> None:
    image = copy(logicals.image, tmp_path / "boot.img")
    code = bytes(range(256)) + bytes(range(184))  # 440 bytes of "boot loader"
    apply(image, [(0, code)])
    table = parse_file(image, mbr.parse, 512)
    assert table is not None
    writes = mbr.build(table, logicals.scenario.disk_size, boot_sector=first_sector(image, 512))
    rebuilt = copy(logicals.image, tmp_path / "rebuilt.img")
    apply(rebuilt, writes)
    assert read_bytes(rebuilt, 0, 440) == code
    assert expected_partitions(rebuilt) == logicals.expected
    assert all(read_bytes(image, offset, len(data)) == data for offset, data in writes)


def test_a_larger_disk_changes_nothing(logicals: Made) -> None:
    table = parse_file(logicals.image, mbr.parse, 512)
    assert table is not None
    boot = first_sector(logicals.image, 512)
    size = logicals.scenario.disk_size
    assert mbr.build(table, 4 * size, boot_sector=boot) == mbr.build(table, size, boot_sector=boot)


def test_build_places_missing_ebr_offsets(tmp_path: Path) -> None:
    """A table made by hand (no EBR offsets) is written so that sfdisk reads it back."""
    need("sfdisk")
    ss = 512
    table = PartitionTable(
        kind="mbr",
        sector_size=ss,
        disk_id="0x0badcafe",
        partitions=(
            Partition(1, 1 * MiB, 8 * MiB, "0x83", kind="primary", bootable=True),
            Partition(2, 9 * MiB, 40 * MiB, "0x0f", kind="extended"),
            Partition(5, 10 * MiB, 4 * MiB, "0x07", kind="logical"),
            Partition(6, 15 * MiB, 4 * MiB, "0x82", kind="logical"),
        ),
    )
    image = blank(tmp_path / "hand.img", 64 * MiB)
    apply(image, mbr.build(table, 64 * MiB))
    assert seen(table.partitions) == expected_partitions(image)
    back = parse_file(image, mbr.parse, ss)
    assert back is not None
    assert [p.ebr_offset for p in back.partitions] == [None, None, 9 * MiB, 15 * MiB - ss]


def hand_table(*partitions: Partition) -> PartitionTable:
    return PartitionTable(kind="mbr", sector_size=512, disk_id="0x1", partitions=partitions)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (hand_table(Partition(5, MiB, MiB, "0x83", kind="logical")), "outside the extended"),
        (hand_table(Partition(5, MiB, MiB, "0x83", kind="primary")), "numbered 1 to 4"),
        (hand_table(Partition(1, MiB, 128 * MiB, "0x83", kind="primary")), "needs a disk of"),
        (hand_table(Partition(1, MiB, MiB, "0x183", kind="primary")), "not one byte"),
        (hand_table(Partition(1, MiB, MiB, "0x83", kind="gpt")), "no place in an MBR"),
        (hand_table(Partition(1, 3 * 2**41, MiB, "0x83", kind="primary")), "needs a disk"),
        (
            hand_table(
                Partition(1, MiB, 8 * MiB, "0x05", kind="extended"),
                Partition(2, 9 * MiB, 8 * MiB, "0x05", kind="extended"),
            ),
            "more than one extended",
        ),
        (
            hand_table(
                Partition(1, MiB, 8 * MiB, "0x05", kind="extended"),
                Partition(5, 2 * MiB, MiB, "0x83", kind="logical", ebr_offset=2 * MiB),
            ),
            "EBR must lie before",
        ),
    ],
)
def test_build_refuses_what_an_mbr_cannot_hold(table: PartitionTable, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mbr.build(table, 64 * MiB)


def test_32_bit_limit() -> None:
    table = hand_table(Partition(1, 512, 2**32 * 512, "0x83", kind="primary"))
    with pytest.raises(ValueError, match="32-bit"):
        mbr.build(table, 2**33 * 512)


# --- property: parse(build(table)) == table for any valid table ---------------------------

DATA_TYPES = st.integers(0, 255).filter(lambda t: t not in (*mbr.EXTENDED_TYPES, 0xEE))


@st.composite
def mbr_tables(draw: st.DrawFn) -> tuple[PartitionTable, int]:
    ss = draw(st.sampled_from([512, 4096]))
    cursor = 1  # LBA
    slots = draw(st.permutations([1, 2, 3, 4]))[: draw(st.integers(0, 4))]
    extended_slot = draw(st.sampled_from([None, *slots])) if slots else None
    partitions: list[Partition] = []
    for slot in sorted(slots):
        start = cursor + draw(st.integers(0, 4096))
        if slot == extended_slot:
            # lay out the logical partitions inside, each behind its EBR
            inner = start
            logicals = []
            for i in range(draw(st.integers(0, 5))):
                ebr = inner if i == 0 and draw(st.booleans()) else inner + draw(st.integers(0, 64))
                first = ebr + draw(st.integers(1, 2048))
                size = draw(st.integers(1, 2**20))
                logicals.append(
                    Partition(
                        number=5 + i,
                        start=first * ss,
                        size=size * ss,
                        type=f"0x{draw(DATA_TYPES):02x}",
                        kind="logical",
                        bootable=draw(st.booleans()),
                        ebr_offset=ebr * ss,
                    )
                )
                inner = first + size
            length = inner - start + draw(st.integers(1, 2048))
            partitions.append(
                Partition(
                    number=slot,
                    start=start * ss,
                    size=length * ss,
                    type=f"0x{draw(st.sampled_from(sorted(mbr.EXTENDED_TYPES))):02x}",
                    kind="extended",
                    bootable=draw(st.booleans()),
                )
            )
            partitions.extend(logicals)
        else:
            length = draw(st.integers(1, 2**24))
            partitions.append(
                Partition(
                    number=slot,
                    start=start * ss,
                    size=length * ss,
                    type=f"0x{draw(DATA_TYPES):02x}",
                    kind="primary",
                    bootable=draw(st.booleans()),
                )
            )
        cursor = start + length
    disk_size = (cursor + draw(st.integers(0, 2**20))) * ss
    order = sorted(partitions, key=lambda p: (p.kind == "logical", p.number))
    table = PartitionTable(
        kind="mbr",
        sector_size=ss,
        disk_id=f"0x{draw(st.integers(0, 2**32 - 1)):08x}",
        partitions=tuple(order),
    )
    return table, disk_size


@settings(max_examples=150, deadline=None)
@given(mbr_tables())
def test_parse_of_build_is_the_table(case: tuple[PartitionTable, int]) -> None:
    table, disk_size = case
    disk = SparseDisk(disk_size, mbr.build(table, disk_size))
    assert mbr.parse(disk, table.sector_size) == table
