"""ext2/3/4 specifics: uninitialised groups, meta_bg, freed blocks, damage.

Expected maps come from ``dumpe2fs`` (``fsimages.dumpe2fs_used``); the layouts
the tests rely on (which groups are BLOCK_UNINIT, where descriptors sit) are
read from its output too, so a test cannot pass without exercising its case.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.fs import ext
from blockvault.disk.fs.c_ext import SUPERBLOCK_OFFSET, c_ext
from blockvault.disk.fs.probe import probe
from blockvault.errors import FilesystemError
from tests.conftest import need_tools, sh

from .fsimages import MiB, build_ext, dumpe2fs_used, read_map


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tools("mke2fs", "dumpe2fs", "debugfs", "e2fsck")


def _groups(image: Path) -> list[str]:
    """dumpe2fs's paragraph for each group."""
    return re.split(r"\n(?=Group \d+:)", sh("dumpe2fs", image))[1:]


def test_uninitialised_groups_keep_their_backups_and_tables(tmp_path: Path) -> None:
    image = build_ext(tmp_path, 300 * MiB, "-t", "ext4", "-b", "1024")
    uninit = [g for g in _groups(image) if "BLOCK_UNINIT" in g.splitlines()[0]]
    assert len(uninit) > 20
    assert any("Backup superblock" in g for g in uninit)  # groups 3, 5, 7, 9, 25, 27
    assert read_map(image, ext.read).used == dumpe2fs_used(image)


def test_meta_bg_descriptors_in_uninitialised_groups(tmp_path: Path) -> None:
    image = build_ext(
        tmp_path, 1024 * MiB, "-t", "ext4", "-b", "1024", "-O", "64bit,meta_bg,^resize_inode"
    )
    meta = [g for g in _groups(image) if "Group descriptor at" in g]
    # One GDT block per 16 groups, in the first, second and last group of each.
    assert len(meta) == 3 * 128 // 16
    assert any("BLOCK_UNINIT" in g.splitlines()[0] for g in meta)
    assert read_map(image, ext.read).used == dumpe2fs_used(image)


def test_freed_blocks_leave_the_map(tmp_path: Path) -> None:
    image = build_ext(tmp_path, 64 * MiB, "-t", "ext4", "-b", "4096")
    before = read_map(image, ext.read).used
    sh("debugfs", "-w", "-R", "rm /var/lib/app/store.db", image)
    sh("e2fsck", "-fn", image)
    after = read_map(image, ext.read).used
    assert after == dumpe2fs_used(image)
    assert before.total - after.total >= 256 * 1024  # the large file is 3/8 MiB or more


def test_unreplayed_journal_is_noted(tmp_path: Path) -> None:
    image = build_ext(tmp_path, 16 * MiB, "-t", "ext4")
    sh("debugfs", "-w", "-R", "feature needs_recovery", image)
    info = read_map(image, ext.read)
    assert info.note and "journal" in info.note
    assert info.used == dumpe2fs_used(image)


def test_partition_relative_offsets(tmp_path: Path) -> None:
    image = build_ext(tmp_path, 16 * MiB, "-t", "ext3", "-b", "2048")
    disk = tmp_path / "disk.img"
    with disk.open("wb") as out:
        out.truncate(1 * MiB)
        out.seek(1 * MiB)
        out.write(image.read_bytes())
        out.truncate(18 * MiB)
    with open_device(disk) as dev:
        info = probe(dev.region(1 * MiB, 16 * MiB))
    assert info.type == "ext3"
    assert info.used == dumpe2fs_used(image)


def test_truncated_partition_is_refused(tmp_path: Path) -> None:
    image = build_ext(tmp_path, 16 * MiB, "-t", "ext4")
    with open_device(image) as dev, pytest.raises(FilesystemError, match="truncated"):
        ext.read(dev.region(0, 8 * MiB))


def test_descriptor_pointing_outside_is_refused(tmp_path: Path) -> None:
    image = build_ext(tmp_path, 16 * MiB, "-t", "ext4", "-b", "4096")
    assert "Group descriptors at 1-1" in sh("dumpe2fs", image)
    with image.open("r+b") as f:
        f.seek(4096)  # group 0's descriptor
        desc = c_ext.ext4_group_desc(f.read(len(c_ext.ext4_group_desc)))
        desc.bg_block_bitmap_lo = 0x7FFF_FFFF
        f.seek(4096)
        f.write(desc.dumps())
    with pytest.raises(FilesystemError, match=r"ext4 filesystem group 0 descriptor: block bitmap"):
        read_map(image, ext.read)


def test_unknown_incompatible_feature_is_refused(tmp_path: Path) -> None:
    image = build_ext(tmp_path, 16 * MiB, "-t", "ext4")
    with image.open("r+b") as f:
        f.seek(SUPERBLOCK_OFFSET)
        sb = c_ext.ext4_super_block(f.read(len(c_ext.ext4_super_block)))
        sb.s_feature_incompat |= 0x8000_0000
        f.seek(SUPERBLOCK_OFFSET)
        f.write(sb.dumps())
    with pytest.raises(FilesystemError, match="unknown incompatible features 0x80000000"):
        read_map(image, ext.read)


def test_external_journal_is_not_a_filesystem(tmp_path: Path) -> None:
    image = tmp_path / "journal.img"
    with image.open("wb") as f:
        f.truncate(8 * MiB)
    sh("mke2fs", "-q", "-F", "-O", "journal_dev", image)
    info = read_map(image)
    assert info.type == "raw"
    assert info.used_bytes == 8 * MiB
