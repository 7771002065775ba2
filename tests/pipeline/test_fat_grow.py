"""--grow of FAT12/16/32 partitions on clone and restore (disk/fs/fat_grow.py).

Oracles: sfdisk --verify / sgdisk -v for the table, ``fsck.vfat -n`` for the grown
filesystem, ``minfo`` (mtools) for its new size, and ``mcopy`` for its files, which
must equal the source's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from blockvault.disk.fs.resize import grow_filesystem
from blockvault.pipeline.backup import backup
from blockvault.pipeline.clone import clone
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault, sh
from tests.fstree import extract, fsck, tree

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fat-grow") / "tree"
    make_tree(path, 3 * MiB, seed=21)
    return path


def _disk(path: Path, table: str, fs: str, size: int, content: Path) -> BuiltDisk:
    spec = DiskSpec(
        table,
        size,
        [
            PartitionSpec("ext2", 4 * MiB, label="boot"),
            PartitionSpec(fs, 0, label="data", content=content),
        ],
    )
    return build_disk(spec, path)


def _volume_bytes(image: Path) -> int:
    """The filesystem's size as mtools reads its boot sector."""
    info = sh("minfo", "-i", image, "::")
    fields = dict(re.findall(r"^(small size|big size|sector size): (\d+)", info, re.MULTILINE))
    sectors = int(fields.get("small size", "0")) or int(fields["big size"])
    return sectors * int(fields["sector size"])


def _fat_sectors(image: Path) -> int:
    info = sh("minfo", "-i", image, "::")
    fields = dict(re.findall(r"^(sectors per fat|Big fatlen)[:=] ?(\d+)", info, re.MULTILINE))
    return int(fields.get("sectors per fat", "0")) or int(fields["Big fatlen"])


def _check_grown(target: Path, disk: BuiltDisk, tmp: Path) -> tuple[int, str]:
    """The grown partition's size and filesystem; asserts table, fsck and files."""
    sh("sfdisk", "--verify", target)
    if disk.table == "gpt":
        assert "No problems found" in sh("sgdisk", "-v", target)
    part = disk.by_label("data")
    entry = json.loads(sh("sfdisk", "--json", target))["partitiontable"]["partitions"][-1]
    size = int(entry["size"]) * 512
    assert int(entry["start"]) * 512 == part.offset and size > part.size
    copy = extract(target, part.offset, size, tmp / "grown.img")
    fsck(copy, part.fs)
    source = extract(disk.path, part.offset, part.size, tmp / "source.img")
    assert tree(copy, part.fs, tmp / "a") == tree(source, part.fs, tmp / "b")
    return size, str(copy)


@pytest.mark.parametrize(("table", "fs"), [("mbr", "fat12"), ("mbr", "fat16"), ("gpt", "fat32")])
def test_clone_grow_fat(table: str, fs: str, content: Path, tmp_path: Path) -> None:
    disk = _disk(tmp_path / "disk.img", table, fs, 48 * MiB if fs == "fat32" else 16 * MiB, content)
    target = tmp_path / "big.img"
    with open(target, "wb") as f:
        f.truncate(disk.size + 24 * MiB)
    proc = blockvault("clone", disk.path, target, "--grow")
    assert proc.returncode == 0, proc.stderr
    assert f"{fs} filesystem grown" in proc.stdout, proc.stdout
    size, copy = _check_grown(target, disk, tmp_path)
    volume = _volume_bytes(Path(copy))
    if fs == "fat12":  # 4084 clusters at most: it grows as far as FAT12 reaches
        assert disk.by_label("data").size < volume <= size
    else:
        assert volume == size  # the filesystem fills its partition


def test_fat16_stops_at_its_cluster_limit(content: Path, tmp_path: Path) -> None:
    image = tmp_path / "fat16.img"
    with open(image, "wb") as f:
        f.truncate(20 * MiB)
    sh("mkfs.fat", "-F", "16", "-s", "1", image)  # 512-byte clusters: FAT16 ends at 32 MiB
    sh("mcopy", "-s", "-i", image, content, "::/t")
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * MiB)
    result = clone(str(image), str(big), grow=True)
    assert result.grown and "at most 65524 clusters" in result.grown
    fsck(big, "fat16")
    assert 32 * MiB <= _volume_bytes(big) < 33 * MiB
    assert tree(big, "fat16", tmp_path / "a") == tree(image, "fat16", tmp_path / "b")


def test_restore_grow_fat32(content: Path, tmp_path: Path) -> None:
    disk = _disk(tmp_path / "disk.img", "gpt", "fat32", 48 * MiB, content)
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(disk.path))
    target = tmp_path / "big.img"
    with open(target, "wb") as f:
        f.truncate(disk.size + 40 * MiB)
    result = restore(repo, snap, str(target), grow=True)
    assert result.grown and "fat32 filesystem grown" in result.grown
    size, copy = _check_grown(target, disk, tmp_path)
    assert _volume_bytes(Path(copy)) == size


@pytest.mark.parametrize(("fat", "cluster_sectors"), [("12", "4"), ("16", "1"), ("32", "1")])
def test_grow_moves_directory_clusters(
    fat: str, cluster_sectors: str, content: Path, tmp_path: Path
) -> None:
    """Small clusters: many of the first clusters (directories among them, one spanning
    several clusters with long names) lie under the grown FATs and must move."""
    crowd = tmp_path / "crowd"
    crowd.mkdir()
    for n in range(120):
        (crowd / f"a file with a long name number {n:03d}.txt").write_text(f"{n}\n" * n)
    image = tmp_path / "fat.img"
    with open(image, "wb") as f:
        f.truncate({"12": 2, "16": 16, "32": 34}[fat] * MiB)
    sh("mkfs.fat", "-F", fat, "-s", cluster_sectors, image)
    sh("mcopy", "-s", "-i", image, crowd, "::/crowd")
    if fat != "12":
        sh("mcopy", "-s", "-i", image, content, "::/t")
    source = tmp_path / "source.img"
    source.write_bytes(image.read_bytes())
    with open(image, "r+b") as f:
        f.truncate(3 * image.stat().st_size)
    done = grow_filesystem(image, 0, image.stat().st_size, f"fat{fat}")
    assert "grown" in done, done
    fsck(image, f"fat{fat}")
    assert _volume_bytes(image) > _volume_bytes(source)
    assert _fat_sectors(image) > _fat_sectors(source)  # so the data region moved on
    assert tree(image, "fat", tmp_path / "a") == tree(source, "fat", tmp_path / "b")
