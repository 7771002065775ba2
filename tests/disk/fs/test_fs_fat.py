"""FAT specifics: bad clusters, and damage refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.fs import fat
from blockvault.disk.fs.c_fat import c_fat
from blockvault.errors import FilesystemError
from tests.conftest import need_tools, sh
from tests.fstree import fsck

from .fsimages import MiB, blkid, copy_used, fsck_fat, new_image, read_map


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tools("mkfs.fat", "fsck.fat", "mcopy")


def test_bad_clusters_are_left_out(tmp_path: Path) -> None:
    image = new_image(tmp_path / "fat.img", 20 * MiB)
    bad_blocks = [5000, 5001, 9000]  # mkfs.fat -l counts 1 KiB blocks
    (tmp_path / "bad.txt").write_text("".join(f"{b}\n" for b in bad_blocks))
    sh("mkfs.fat", "-F", "16", "-s", "4", "-l", tmp_path / "bad.txt", image)
    report = fsck_fat(image)
    bad = {(b * 1024 - report.data_start) // report.cluster + 2 for b in bad_blocks}
    assert len(bad) == 2  # blocks 5000 and 5001 share a 2 KiB cluster

    info = read_map(image, fat.read)
    for cluster in bad:
        offset = report.data_start + (cluster - 2) * report.cluster
        assert not info.used.clip(offset, report.cluster)
    # fsck.fat counts bad clusters as used; here only the root directory is.
    assert report.used_clusters == len(bad)
    assert info.used.total == report.data_start

    copy = copy_used(image, info.used, tmp_path / "copy.img")
    fsck(copy, "fat16")
    assert fsck_fat(copy).used_clusters == len(bad)  # still marked bad in the copy's FAT


def test_fat32_below_the_minimum_cluster_count(tmp_path: Path) -> None:
    # mkfs.fat -F 32 makes it; Linux and dosfstools read it as FAT32 (mtools refuses it).
    image = new_image(tmp_path / "fat.img", 16 * MiB)
    sh("mkfs.fat", "-F", "32", image)
    report = fsck_fat(image)
    assert report.clusters < 65525
    info = read_map(image, fat.read)
    assert info.type == "fat32" == blkid(image)["VERSION"].lower()
    assert info.used.total == report.data_start + report.used_clusters * report.cluster
    fsck(copy_used(image, info.used, tmp_path / "copy.img"), "fat32")


def test_truncated_partition_is_refused(tmp_path: Path) -> None:
    image = new_image(tmp_path / "fat.img", 40 * MiB)
    sh("mkfs.fat", "-F", "32", image)
    with open_device(image) as dev, pytest.raises(FilesystemError, match=r"fat32 .*truncated"):
        fat.read(dev.region(0, 20 * MiB))


def test_no_room_for_data_is_refused(tmp_path: Path) -> None:
    image = new_image(tmp_path / "fat.img", 4 * MiB)
    sh("mkfs.fat", "-F", "12", image)
    with image.open("r+b") as f:
        # a volume of 16 sectors, smaller than its own FATs
        f.seek(c_fat.fat_bpb.fields["BPB_TotSec16"].offset)
        f.write((16).to_bytes(2, "little"))
    with pytest.raises(FilesystemError, match="no room for data"):
        read_map(image, fat.read)
