"""The boot sector copies of FAT and NTFS volumes, as mkfs.fat and mkntfs write them,
and bounded by the volume when a boot sector points elsewhere; the hidden-sector
count moved in each, as minfo (mtools) and the NTFS boot sector's own backup read it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.fs.c_fat import c_fat
from blockvault.disk.fs.c_ntfs import c_ntfs
from blockvault.disk.fs.hidden import boot_sector_copies, move_hidden_sectors
from tests.conftest import need_tools, sh

from .fsimages import MiB, new_image


def _fat32(tmp_path: Path) -> Path:
    image = new_image(tmp_path / "fat32.img", 40 * MiB)
    sh("mkfs.fat", "-F", "32", "-b", "6", image)
    return image


def _ntfs(tmp_path: Path) -> Path:
    image = new_image(tmp_path / "ntfs.img", 16 * MiB)
    sh("mkntfs", "-q", "-F", "-Q", "-f", image)
    return image


def _copies(image: Path) -> list[int] | None:
    with open_device(image) as dev:
        return boot_sector_copies(dev)


def _patch(image: Path, struct: object, **fields: int) -> None:
    with image.open("r+b") as f:
        boot = struct(f.read(512))  # type: ignore[operator]
        for name, value in fields.items():
            *parents, last = name.split("__")
            target = boot
            for parent in parents:
                target = getattr(target, parent)
            setattr(target, last, value)
        f.seek(0)
        f.write(boot.dumps())


def test_fat32_backup_boot_sector_where_mkfs_fat_put_it(tmp_path: Path) -> None:
    need_tools("mkfs.fat", "minfo")
    image = _fat32(tmp_path)
    backup = int(re.search(r"backup boot sector=(\d+)", sh("minfo", "-i", image, "::"))[1])  # type: ignore[index]
    assert _copies(image) == [0, backup * 512] == [0, 6 * 512]


def test_fat32_backup_pointing_outside_the_volume_is_not_a_copy(tmp_path: Path) -> None:
    need_tools("mkfs.fat")
    image = _fat32(tmp_path)
    _patch(image, c_fat.fat_boot_sector, fat32__BPB_BkBootSec=0xFFFE)  # 32 MiB in: outside
    with open_device(image) as dev:
        assert boot_sector_copies(dev.region(0, 20 * MiB)) == [0]


def test_ntfs_backup_after_the_volume_and_at_the_partition_end(tmp_path: Path) -> None:
    need_tools("mkntfs")
    image = _ntfs(tmp_path)
    size = image.stat().st_size
    assert _copies(image) == [0, size - 512]  # mkntfs fills the file: the two coincide
    bigger = new_image(tmp_path / "bigger.img", size + MiB)
    bigger.write_bytes(image.read_bytes() + bytes(MiB))
    assert _copies(bigger) == [0, size - 512]  # nothing copied at the new end yet


def test_ntfs_boot_sector_counting_past_the_volume_gets_no_write_there(tmp_path: Path) -> None:
    need_tools("mkntfs")
    image = _ntfs(tmp_path)
    size = image.stat().st_size
    _patch(image, c_ntfs.NTFS_BOOT_SECTOR, number_of_sectors=size)  # 512 times the volume
    assert _copies(image) == [0, size - 512]  # the partition-end copy, nothing beyond
    with open_device(image) as dev:
        assert boot_sector_copies(dev.region(0, size - 512)) == [0]


def test_not_fat_or_ntfs(tmp_path: Path) -> None:
    image = new_image(tmp_path / "zero.img", MiB)
    assert _copies(image) is None


@pytest.mark.parametrize("fs", ["fat32", "ntfs"])
def test_hidden_sectors_move_in_every_copy(tmp_path: Path, fs: str) -> None:
    need_tools("mkfs.fat", "mkntfs", "minfo")
    image = _fat32(tmp_path) if fs == "fat32" else _ntfs(tmp_path)
    start = 2048 * 512  # as if the volume were the first partition of a disk
    disk = new_image(tmp_path / "disk.img", start + image.stat().st_size)
    with disk.open("r+b") as f:
        f.seek(start)
        f.write(image.read_bytes())
    size = image.stat().st_size
    with open_device(disk, write=True) as dev:
        assert move_hidden_sectors(dev, start, size, 512)
        copies = boot_sector_copies(dev.region(start, size))
    assert copies is not None and len(copies) == 2
    raw = disk.read_bytes()[start:]
    if fs == "fat32":
        moved = sh("minfo", "-i", f"{disk}@@{start}", "::")
        assert int(re.search(r"hidden sectors: (\d+)", moved)[1]) == 2048  # type: ignore[index]
    for at in copies:
        assert c_fat.fat_bpb(raw[at : at + 36]).BPB_HiddSec == 2048, at
