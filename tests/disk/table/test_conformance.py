"""The suite every partition table kind passes, on tables written by sfdisk and sgdisk.

For each scenario: the parse equals what sfdisk reports, ``read_table`` finds the
same table, building it for the same disk size onto a blank image gives back the
tool's image byte for byte, and parsing the built writes gives the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.table import PartitionTable, gpt, mbr
from blockvault.disk.table.probe import read_table

from .diskimages import SparseDisk, apply, blank, first_sector, parse_file, same_files, seen
from .scenarios import Made, Scenario, scenario_params

MODULES: dict[str, Any] = {"gpt": gpt, "mbr": mbr}


@pytest.fixture(params=scenario_params())
def made(request: pytest.FixtureRequest, scenario_image: Callable[[Scenario], Made]) -> Made:
    return scenario_image(request.param)


def parsed(made: Made) -> PartitionTable:
    table = parse_file(made.image, MODULES[made.scenario.kind].parse, made.scenario.sector_size)
    assert table is not None
    return table


def build(made: Made, table: PartitionTable, disk_size: int) -> list[tuple[int, bytes]]:
    boot = first_sector(made.image, table.sector_size)
    if table.kind == "gpt":
        return gpt.build(table, disk_size, protective=True, boot_sector=boot)
    return mbr.build(table, disk_size, boot_sector=boot)


def test_parse_matches_sfdisk(made: Made) -> None:
    table = parsed(made)
    assert table.kind == made.scenario.kind
    assert table.sector_size == made.scenario.sector_size
    assert table.note is None
    assert seen(table.partitions) == made.expected
    assert table.disk_id == made.oracle["id"].lower()
    if table.kind == "gpt":
        assert table.first_usable_lba == made.oracle["firstlba"]
        assert table.last_usable_lba == made.oracle["lastlba"]


def test_read_table_finds_it(made: Made) -> None:
    # An image file does not know its sector size: GPT tells it, an MBR cannot.
    size = None if made.scenario.kind == "gpt" else made.scenario.sector_size
    with open_device(made.image) as disk:
        assert read_table(disk, size) == parsed(made)


def test_build_same_size_reproduces_the_image(made: Made, tmp_path: Path) -> None:
    table = parsed(made)
    rebuilt = blank(tmp_path / "rebuilt.img", made.scenario.disk_size)
    apply(rebuilt, build(made, table, made.scenario.disk_size))
    # The tool wrote nothing but the table: every byte of both images must agree.
    assert same_files(rebuilt, made.image)


def test_parse_of_build_is_the_table(made: Made) -> None:
    table = parsed(made)
    disk = SparseDisk(made.scenario.disk_size, build(made, table, made.scenario.disk_size))
    assert MODULES[table.kind].parse(disk, table.sector_size) == table
