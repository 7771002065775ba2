"""The partition tables the tests start from, each written by sfdisk or sgdisk.

A scenario names a tool script, a sector size and a disk size; ``make`` runs it on a
blank image (through a loop device for 4096-byte sectors, which needs root) and
records what sfdisk and sgdisk report about the result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .diskimages import MiB, blank, expected_partitions, loop_device, need, run, sfdisk_json

DISK_GUID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
ROOT_GUID = "a1b2c3d4-1111-4222-8333-444455556666"


def sgdisk_gpt(target: str) -> None:
    """Names (one of 36 units, one with a surrogate pair), attributes, a hole in numbering."""
    run(
        "sgdisk",
        "-o",
        "-U", DISK_GUID,
        "-n", "1:2048:+4M", "-t", "1:ef00", "-c", "1:EFI system", "-A", "1:set:0",
        "-n", "2:0:+8M", "-t", "2:8300", "-c", "2:root ü∑😀", "-u", f"2:{ROOT_GUID}",
        "-A", "2:set:2", "-A", "2:set:60", "-A", "2:set:63",
        "-n", "5:0:+4M", "-t", "5:8200", "-c", "5:swap",
        "-n", "3:0:0", "-t", "3:8e00", "-c", "3:abcdefghijklmnopqrstuvwxyz0123456789",
        target,
    )  # fmt: skip


def sfdisk_gpt(table_length: int) -> Callable[[str], None]:
    script = f"""label: gpt
label-id: {DISK_GUID.upper()}
table-length: {table_length}
start=1MiB, size=4MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition", attrs="RequiredPartition"
size=8MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={ROOT_GUID.upper()}, name="root", attrs="LegacyBIOSBootable GUID:48,63"
size=4MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"
type=E6D6D379-F507-44C2-A23C-238F2A3DF928
"""  # noqa: E501

    def make(target: str) -> None:
        run("sfdisk", "--quiet", target, stdin=script)

    return make


def sfdisk_script(script: str) -> Callable[[str], None]:
    def make(target: str) -> None:
        run("sfdisk", "--quiet", target, stdin=script)

    return make


MBR_PRIMARIES = """label: dos
label-id: 0x1234abcd
start=1MiB, size=8MiB, type=83, bootable
size=8MiB, type=7
size=8MiB, type=c
type=82
"""

MBR_LOGICALS = """label: dos
label-id: 0xdeadbeef
start=1MiB, size=8MiB, type=83
size=8MiB, type=7, bootable
size=8MiB, type=b
type=5
size=4MiB, type=83
size=6MiB, type=82
type=8e
"""

MBR_LBA_EXTENDED = """label: dos
label-id: 0x00c0ffee
start=2048, size=8MiB, type=83
type=f
size=8MiB, type=7
type=c, bootable
"""

MBR_EMPTY_EXTENDED = """label: dos
start=2048, size=8MiB, type=83
size=16MiB, type=85
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    sector_size: int
    disk_size: int
    make: Callable[[str], None]

    @property
    def tool(self) -> str:
        """The program that wrote the table: "sfdisk" or "sgdisk"."""
        return self.name.split("-")[1]


SCENARIOS = [
    Scenario("gpt-sgdisk-512", "gpt", 512, 64 * MiB, sgdisk_gpt),
    Scenario("gpt-sfdisk-512", "gpt", 512, 64 * MiB, sfdisk_gpt(table_length=8)),
    Scenario("gpt-sgdisk-4096", "gpt", 4096, 96 * MiB, sgdisk_gpt),
    Scenario("gpt-sfdisk-4096", "gpt", 4096, 96 * MiB, sfdisk_gpt(table_length=128)),
    Scenario("mbr-primaries-512", "mbr", 512, 64 * MiB, sfdisk_script(MBR_PRIMARIES)),
    Scenario("mbr-logicals-512", "mbr", 512, 64 * MiB, sfdisk_script(MBR_LOGICALS)),
    Scenario("mbr-lba-extended-512", "mbr", 512, 64 * MiB, sfdisk_script(MBR_LBA_EXTENDED)),
    Scenario("mbr-empty-extended-512", "mbr", 512, 64 * MiB, sfdisk_script(MBR_EMPTY_EXTENDED)),
    Scenario("mbr-logicals-4096", "mbr", 4096, 96 * MiB, sfdisk_script(MBR_LOGICALS)),
]


@dataclass(frozen=True)
class Made:
    scenario: Scenario
    image: Path
    expected: list[Any]
    oracle: dict[str, Any]  # sfdisk --json "partitiontable"


def make(scenario: Scenario, directory: Path) -> Made:
    need("sfdisk", "sgdisk")
    image = blank(directory / "disk.img", scenario.disk_size)
    if scenario.sector_size == 512:
        scenario.make(str(image))
        return Made(scenario, image, expected_partitions(image), sfdisk_json(image))
    with loop_device(image, scenario.sector_size) as device:
        scenario.make(device)
        return Made(scenario, image, expected_partitions(device), sfdisk_json(device))


def scenario_params(kind: str | None = None) -> list[Any]:
    """pytest params for the scenarios of ``kind`` (all when None); 4096 needs root."""
    return [
        pytest.param(s, id=s.name, marks=[pytest.mark.root] if s.sector_size != 512 else [])
        for s in SCENARIOS
        if kind is None or s.kind == kind
    ]


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; one with 4096-byte sectors is skipped without root."""
    found = next(s for s in SCENARIOS if s.name == name)
    if found.sector_size != 512 and os.geteuid() != 0:
        pytest.skip("4096-byte sectors need a loop device, which needs root")
    return found
