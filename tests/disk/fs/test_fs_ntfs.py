"""NTFS specifics: update sequence checks, the backup boot sector, damage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.fs import ntfs
from blockvault.errors import FilesystemError
from tests.conftest import need_tools, sh

from .fsimages import MiB, new_image, read_map


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tools("mkntfs", "ntfsinfo")


def _mkntfs(tmp_path: Path, size: int = 16 * MiB) -> Path:
    image = new_image(tmp_path / "ntfs.img", size)
    sh("mkntfs", "-q", "-F", "-Q", "-f", image)
    return image


def _mft_offset(image: Path) -> int:
    """Byte offset of the MFT, from ntfsinfo."""
    out = sh("ntfsinfo", "-m", image)
    lcn = int(re.search(r"LCN of Data Attribute for FILE_MFT: (\d+)", out)[1])  # type: ignore[index]
    cluster = int(re.search(r"Cluster Size: (\d+)", out)[1])  # type: ignore[index]
    return lcn * cluster


def test_torn_bitmap_record_is_refused(tmp_path: Path) -> None:
    image = _mkntfs(tmp_path)
    record_size = 1024  # mkntfs's default
    with image.open("r+b") as f:
        f.seek(_mft_offset(image) + 6 * record_size + 510)  # end of $Bitmap's first stride
        f.write(b"\xde\xad")
    with pytest.raises(FilesystemError, match=r"ntfs filesystem MFT record 6: fixup 1"):
        read_map(image, ntfs.read)


def test_backup_boot_sector_only_when_inside_the_partition(tmp_path: Path) -> None:
    image = _mkntfs(tmp_path)
    size = image.stat().st_size
    whole = read_map(image, ntfs.read)
    assert whole.used.covers(size - 512, 512)
    with open_device(image) as dev:
        cut = ntfs.read(dev.region(0, size - 512))  # the partition ends before the backup
    assert cut.used == whole.used.clip(0, size - 512)
    assert cut.size == size - 512


def test_truncated_partition_is_refused(tmp_path: Path) -> None:
    image = _mkntfs(tmp_path)
    with open_device(image) as dev, pytest.raises(FilesystemError, match="truncated"):
        ntfs.read(dev.region(0, 8 * MiB))
