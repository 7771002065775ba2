"""The tests every filesystem map passes, on every case of ``fsimages.CASES``.

The strongest one copies only the bytes our map calls used into an all-zero
file of the same size: the filesystem's own checker must accept the copy and
its own tools must read every file back unchanged.
"""

from __future__ import annotations

from pathlib import Path

from blockvault.disk.device import open_device
from blockvault.disk.fs import btrfs, ext, fat, ntfs, swap, xfs
from tests.fstree import fsck

from .conftest import Built
from .fsimages import blkid, copy_used, read_map

MODULES = {"ext": ext, "fat": fat, "ntfs": ntfs, "swap": swap, "xfs": xfs, "btrfs": btrfs}


def test_type_label_and_uuid_agree_with_blkid(built: Built) -> None:
    info, found = built.info, blkid(built.image)
    if found["TYPE"] == "vfat":
        assert info.type == found["VERSION"].lower()  # FAT12, FAT16, FAT32
    else:
        assert info.type == found["TYPE"]
    assert info.type == built.case.type
    assert info.uuid == found.get("UUID")
    assert info.label == found.get("LABEL")


def test_only_its_own_module_detects_it(built: Built) -> None:
    with open_device(built.image) as dev:
        detected = {name for name, module in MODULES.items() if module.detect(dev)}
    assert detected == {built.case.module}


def test_map_lies_within_the_filesystem(built: Built) -> None:
    info = built.info
    assert 0 < info.size <= built.image.stat().st_size
    assert info.used and info.used.start == 0  # the boot/super block is always used
    assert info.used.end <= info.size
    assert info.used.align_out(512) == info.used  # whole sectors
    assert info.block_size > 0


def test_used_bytes_agree_with_the_filesystems_own_tools(built: Built) -> None:
    built.case.check_used(built.image, built.info)


def test_copy_of_used_bytes_is_the_same_filesystem(built: Built, tmp_path: Path) -> None:
    copy = copy_used(built.image, built.info.used, tmp_path / "copy.img")
    fsck(copy, built.info.type)
    files = built.case.read_back(copy, built.source, tmp_path / "files")
    assert files == built.case.expected(built.source)
    assert read_map(copy) == built.info
    if built.info.type == "swap":
        assert blkid(copy) == blkid(built.image)
