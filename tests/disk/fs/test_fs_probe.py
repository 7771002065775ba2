"""What probe does with content no module claims."""

from __future__ import annotations

import random
from pathlib import Path

from blockvault.extents import ExtentMap
from tests.conftest import need_tools, sh

from .fsimages import MiB, new_image, read_map


def test_zeros_are_raw(tmp_path: Path) -> None:
    info = read_map(new_image(tmp_path / "zero.img", 4 * MiB))
    assert info.type == "raw"
    assert info.used == ExtentMap.span(0, 4 * MiB)
    assert info.note == "unknown content, imaged raw"


def test_random_bytes_are_raw(tmp_path: Path) -> None:
    image = tmp_path / "random.img"
    image.write_bytes(random.Random(3).randbytes(2 * MiB))
    assert read_map(image).type == "raw"


def test_tiny_partition_is_raw(tmp_path: Path) -> None:
    image = tmp_path / "tiny.img"
    image.write_bytes(b"\xeb\x3c\x90" + bytes(1021))
    info = read_map(image)
    assert (info.type, info.size, info.used_bytes) == ("raw", 1024, 1024)


def test_overwritten_superblock_is_raw(tmp_path: Path) -> None:
    need_tools("mkfs.ext4", "blkid")
    # A filesystem whose first MiB was overwritten (as by an encryption header).
    image = new_image(tmp_path / "ext.img", 8 * MiB)
    sh("mkfs.ext4", "-q", "-F", image)
    with image.open("r+b") as f:
        f.write(random.Random(4).randbytes(1 * MiB))
    assert read_map(image).type == "raw"
