"""Disk images made by the real tools, and what those tools say about them.

Expected values in these tests come from sfdisk and sgdisk, never from the code
under test. ``SparseDisk`` is a reader made only of the writes a ``build`` returned,
for round trips on disks far larger than any test image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.table import Partition, PartitionTable

MiB = 1024 * 1024
IS_ROOT = os.geteuid() == 0


def run(*args: str | os.PathLike[str], stdin: str | None = None) -> str:
    """Run a tool; fail the test with its stderr when it fails."""
    proc = subprocess.run(
        [str(a) for a in args],
        input=stdin,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc.stdout


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


def blank(path: Path, size: int) -> Path:
    """A sparse image of ``size`` zero bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@contextmanager
def loop_device(image: Path, sector_size: int) -> Iterator[str]:
    """Attach ``image`` with a logical sector size only a block device can have."""
    if not IS_ROOT:
        pytest.skip("4096-byte sectors need a loop device, which needs root")
    proc = subprocess.run(
        ["losetup", "--find", "--show", "--sector-size", str(sector_size), str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:  # root, yet no loop device: a failure, not a reason to skip
        raise AssertionError(f"losetup {image} failed: {proc.stderr.strip()}")
    device = proc.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def sfdisk_json(target: str | Path) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(run("sfdisk", "--json", target))["partitiontable"]
    return table


@dataclass(frozen=True)
class Expected:
    """One partition as the tools report it, in bytes."""

    number: int
    start: int
    size: int
    type: str
    bootable: bool = False
    uuid: str | None = None
    name: str | None = None
    attributes: int = 0


def expected_partitions(target: str | Path) -> list[Expected]:
    """sfdisk's view of the table on ``target`` (plus sgdisk's attribute bits for GPT)."""
    table = sfdisk_json(target)
    ss = int(table.get("sectorsize", 512))
    out = []
    for p in table.get("partitions", []):
        number = int(_last_match(r"(\d+)$", p["node"]))
        if table["label"] == "gpt":
            out.append(
                Expected(
                    number=number,
                    start=p["start"] * ss,
                    size=p["size"] * ss,
                    type=p["type"].lower(),
                    uuid=p["uuid"].lower(),
                    name=p.get("name", ""),
                    attributes=sgdisk_attributes(target, number),
                )
            )
        else:
            out.append(
                Expected(
                    number=number,
                    start=p["start"] * ss,
                    size=p["size"] * ss,
                    type=f"0x{int(p['type'], 16):02x}",
                    bootable=bool(p.get("bootable", False)),
                )
            )
    return out


def sgdisk_attributes(target: str | Path, number: int) -> int:
    info = run("sgdisk", "-i", str(number), target)
    return int(_last_match(r"Attribute flags: ([0-9A-Fa-f]+)", info), 16)


def _last_match(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in {text!r}"
    return match.group(1)


def seen(partitions: Iterable[Partition]) -> list[Expected]:
    """Our partitions in the shape of ``Expected``."""
    return [
        Expected(
            number=p.number,
            start=p.start,
            size=p.size,
            type=p.type,
            bootable=p.bootable,
            uuid=p.uuid,
            name=p.name,
            attributes=p.attributes,
        )
        for p in partitions
    ]


def parse_file(path: Path, parser: Any, sector_size: int) -> PartitionTable | None:
    with open_device(path) as disk:
        result: PartitionTable | None = parser(disk, sector_size)
        return result


def read_bytes(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def first_sector(path: Path, sector_size: int) -> bytes:
    return read_bytes(path, 0, sector_size)


def apply(path: Path, writes: Iterable[tuple[int, bytes]]) -> None:
    with open(path, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def corrupt(path: Path, offset: int) -> None:
    """Flip every bit of one byte."""
    byte = read_bytes(path, offset, 1)
    apply(path, [(offset, bytes([byte[0] ^ 0xFF]))])


def same_files(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "--silent", str(a), str(b)], check=False).returncode == 0


class SparseDisk:
    """A disk of ``size`` zero bytes overlaid with ``writes``: a ``Reader``."""

    def __init__(self, size: int, writes: Iterable[tuple[int, bytes]]) -> None:
        self.size = size
        self.writes = list(writes)

    def read_at(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= self.size, (offset, length, self.size)
        out = bytearray(length)
        for start, data in self.writes:
            lo, hi = max(start, offset), min(start + len(data), offset + length)
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - start : hi - start]
        return bytes(out)


def copy(source: Path, target: Path, size: int | None = None) -> Path:
    """A sparse copy of ``source``, grown to ``size`` bytes when given."""
    run("cp", "--sparse=always", source, target)
    if size is not None:
        with open(target, "r+b") as f:
            f.truncate(size)
    return target
