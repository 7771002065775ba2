"""Clone between 512-byte and 4096-byte sector disks, and --new-ids, end to end through the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk
from tests.conftest import blockvault, need_tools, sh
from tests.disk.test_sectors import check_partitions, sample

MiB = 1 << 20


@pytest.fixture
def content(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "docs").mkdir(parents=True)
    (root / "readme.txt").write_text("cloned across sector sizes\n" * 40)
    (root / "docs" / "big.bin").write_bytes(os.urandom(200 * 1024))
    return root


def test_clone_onto_a_4096_sector_disk_converts_table_and_boot_sectors(
    content: Path, tmp_path: Path, loop: Callable[..., str]
) -> None:
    need_tools("sfdisk", "sgdisk", "mkfs.fat", "mkntfs", "fsck.vfat", "ntfsfix", "mcopy")
    disk = sample("gpt", content, tmp_path)
    target = tmp_path / "4k.img"
    with open(target, "wb") as f:
        f.truncate(disk.size)
    dev = loop(target, sector_size=4096)
    done = blockvault("clone", disk.path, dev, "--yes")
    assert done.returncode == 0, done.stderr
    assert "No problems found" in sh("sgdisk", "-v", dev)
    sh("sfdisk", "--verify", dev)
    check_partitions(disk, target, tmp_path)


def test_a_copy_that_cannot_convert_is_refused_untouched(
    tmp_path: Path, loop: Callable[..., str]
) -> None:
    need_tools("sfdisk", "mkfs.fat")
    # mkfs.fat's default for 12 MiB puts the first cluster at byte 43008, mid 4096-byte sector
    spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("fat16", 12 * MiB, "SMALL")])
    disk = build_disk(spec, tmp_path / "src.img")
    target = tmp_path / "4k.img"
    with open(target, "wb") as f:
        f.truncate(disk.size)
    done = blockvault("clone", disk.path, loop(target, sector_size=4096), "--yes")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "partition 1 (FAT)" in done.stderr
    assert target.read_bytes() == bytes(disk.size)


def test_clone_new_ids_gives_new_ids_and_keeps_files(content: Path, tmp_path: Path) -> None:
    need_tools("sfdisk", "mkfs.fat", "mkntfs", "blkid", "tune2fs")
    if os.geteuid() != 0:
        pytest.skip("tune2fs runs on a loop device")
    spec = DiskSpec(
        "gpt",
        64 * MiB,
        [PartitionSpec("ext4", 24 * MiB, "ROOT", content), PartitionSpec("ntfs", 0, "D", content)],
    )
    disk = build_disk(spec, tmp_path / "src.img")
    kept, fresh = tmp_path / "kept.img", tmp_path / "new.img"
    assert blockvault("clone", disk.path, kept).returncode == 0
    done = blockvault("clone", disk.path, fresh, "--new-ids")
    assert done.returncode == 0, done.stderr

    def ids(path: Path) -> list[str]:
        table = json.loads(sh("sfdisk", "--json", path))["partitiontable"]
        found = [table["id"], *(p["uuid"] for p in table["partitions"])]
        for p in disk.partitions:
            found.append(sh("blkid", "-p", "-o", "value", "-s", "UUID", "-O", str(p.offset), path))
        return found

    source = ids(disk.path)
    assert ids(kept) == source
    renewed = ids(fresh)
    assert all(a != b for a, b in zip(renewed, source, strict=True)), (source, renewed)
    check_partitions(disk, fresh, tmp_path)


def test_restore_onto_a_4096_sector_disk_converts(
    content: Path, tmp_path: Path, loop: Callable[..., str]
) -> None:
    need_tools("sfdisk", "sgdisk", "mkfs.fat", "mkntfs", "fsck.vfat", "ntfsfix", "mcopy")
    disk = sample("mbr", content, tmp_path)
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    backup = blockvault("-r", repo, "backup", disk.path)
    assert backup.returncode == 0, backup.stderr
    target = tmp_path / "4k.img"
    with open(target, "wb") as f:
        f.truncate(disk.size)
    dev = loop(target, sector_size=4096)
    done = blockvault("-r", repo, "restore", "latest", dev, "--yes", "--new-ids")
    assert done.returncode == 0, done.stderr
    sh("sfdisk", "--verify", dev)
    table = json.loads(sh("sfdisk", "--json", dev))["partitiontable"]
    assert table["sectorsize"] == 4096
    assert table["id"] != json.loads(sh("sfdisk", "--json", disk.path))["partitiontable"]["id"]
    check_partitions(disk, target, tmp_path)
