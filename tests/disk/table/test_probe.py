"""read_table: GPT before MBR, None for a disk without a table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.table.probe import read_table

from .diskimages import MiB, blank, need, run
from .scenarios import Made, Scenario, scenario


@pytest.mark.parametrize(
    ("name", "kind"),
    [("gpt-sfdisk-512", "gpt"), ("gpt-sgdisk-4096", "gpt"), ("mbr-logicals-512", "mbr")],
)
def test_kind_and_sector_size(
    name: str, kind: str, scenario_image: Callable[[Scenario], Made]
) -> None:
    made = scenario_image(scenario(name))
    with open_device(made.image) as disk:
        table = read_table(disk)
    assert table is not None
    assert (table.kind, table.sector_size) == (kind, made.scenario.sector_size)


def test_no_table(tmp_path: Path) -> None:
    need("mkfs.ext4")
    tiny = blank(tmp_path / "tiny.img", 100)
    zero = blank(tmp_path / "zero.img", 8 * MiB)
    ext4 = blank(tmp_path / "ext4.img", 8 * MiB)
    run("mkfs.ext4", "-q", "-F", ext4)
    for image in (tiny, zero, ext4):
        with open_device(image) as disk:
            assert read_table(disk) is None, image
