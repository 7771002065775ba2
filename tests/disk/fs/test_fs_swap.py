"""Swap specifics: the area's size from the header, not the partition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blockvault.disk.fs import swap
from blockvault.extents import ExtentMap
from tests.conftest import need_tools, sh

from .fsimages import MiB, new_image, read_map


@pytest.mark.parametrize("page", [4096, 16384])
def test_swap_smaller_than_its_partition(tmp_path: Path, page: int) -> None:
    need_tools("mkswap")
    image = new_image(tmp_path / "swap.img", 16 * MiB)
    out = sh("mkswap", "-p", str(page), image, "4096")  # a 4 MiB area (size in KiB)
    # mkswap reports the usable bytes: every page but the header.
    usable = int(re.search(r"\((\d+) bytes\)", out)[1])  # type: ignore[index]
    info = read_map(image, swap.read)
    assert info.size == usable + page
    assert info.used == ExtentMap.span(0, page)
    assert info.block_size == page
