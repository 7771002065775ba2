"""A GPT disk with a used btrfs partition: backup, restore, and the checks from outside.

The btrfs partition is made by ``mkfs.btrfs`` and used through the kernel (a
subvolume with a nested one, a read-only snapshot, deletions after it), next to an
ext4 partition. The oracles: ``btrfs check`` (data checksums too), the partition
mounted read-only before and after (subvolumes and snapshot included), and the
bytes btrfs-progs says the filesystem uses, against what the backup stored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository, Snapshot
from blockvault_demo.sample import (
    TREE_KINDS,
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    make_tree,
    manifest,
)
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.disk.fs.fsimages import btrfs_progs_used
from tests.fstree import extract, fsck

MiB = 1 << 20


def _mount(image: Path, offset: int, size: int, where: Path, *options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    opts = ["loop", f"offset={offset}", f"sizelimit={size}", *options]
    sh("mount", "-o", ",".join(opts), image, where)


def _seen(image: Path, offset: int, size: int, where: Path) -> dict[str, str]:
    """The files of the btrfs at ``offset`` as the kernel shows them mounted read-only."""
    _mount(image, offset, size, where, "ro")
    try:
        return manifest(where)
    finally:
        sh("umount", where)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    need_tools("mkfs.btrfs", "btrfs", "sfdisk")
    work = tmp_path_factory.mktemp("btrfs-roundtrip")
    make_tree(work / "boot", 2 * MiB, seed=31, kinds=TREE_KINDS)
    make_tree(work / "root", 8 * MiB, seed=32, kinds=TREE_KINDS)
    built = build_disk(
        DiskSpec(
            "gpt",
            640 * MiB,
            [
                PartitionSpec("ext4", 96 * MiB, "boot", work / "boot"),
                PartitionSpec("btrfs", 0, "root", work / "root"),
            ],
        ),
        work / "disk.img",
    )
    part = built.partitions[1]
    mnt = work / "mnt"
    _mount(built.path, part.offset, part.size, mnt)
    try:
        sh("btrfs", "subvolume", "create", mnt / "vol")
        sh("btrfs", "subvolume", "create", mnt / "vol" / "user")
        make_tree(mnt / "vol" / "user" / "docs", 12 * MiB, seed=33, kinds=TREE_KINDS)
        make_tree(mnt / "vol" / "music", 8 * MiB, seed=34, kinds=TREE_KINDS)
        sh("btrfs", "subvolume", "snapshot", "-r", mnt / "vol", mnt / "vol-1")
        shutil.rmtree(mnt / "vol" / "music")
        (mnt / "big.bin").write_bytes(bytes(range(256)) * (40 * MiB // 256))
        (mnt / "big.bin").unlink()  # its blocks are free again: never stored
    finally:
        sh("umount", mnt)
    return built


@pytest.fixture(scope="module")
def backed(
    disk: BuiltDisk, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Repository, Snapshot]:
    repo = Repository.init(str(tmp_path_factory.mktemp("repo") / "repo"))
    return repo, backup(repo, str(disk.path))


@needs_root
def test_backup_stores_about_the_used_data(
    disk: BuiltDisk, backed: tuple[Repository, Snapshot], tmp_path: Path
) -> None:
    _repo, snap = backed
    record = snap.partitions[1]
    assert (record.filesystem, record.imaged) == ("btrfs", True)
    part = disk.partitions[1]
    used = btrfs_progs_used(extract(disk.path, part.offset, part.size, tmp_path / "p2.img"))
    assert record.used_bytes == used.total
    assert record.used_bytes < part.size // 8  # not the 544 MiB partition
    # everything stored: the ext4 and btrfs used bytes, compressed; never the freed 40 MiB
    assert snap.stats.stored_bytes < snap.stats.used_bytes + MiB
    assert snap.stats.used_bytes < 80 * MiB


@needs_root
def test_restore_checks_clean_with_the_same_subvolumes_and_files(
    disk: BuiltDisk, backed: tuple[Repository, Snapshot], tmp_path: Path
) -> None:
    repo, snap = backed
    target = tmp_path / "restored.img"
    restore(repo, snap, str(target))
    part = disk.partitions[1]
    fsck(extract(target, part.offset, part.size, tmp_path / "p2.img"), "btrfs")
    fsck(
        extract(target, disk.partitions[0].offset, disk.partitions[0].size, tmp_path / "p1"), "ext4"
    )
    expected = _seen(disk.path, part.offset, part.size, tmp_path / "a")
    assert "vol-1/music" in expected and "vol/user/docs" in expected
    assert "vol/music" not in expected
    assert _seen(target, part.offset, part.size, tmp_path / "b") == expected


@needs_root
def test_onto_a_smaller_disk_btrfs_keeps_its_size(
    disk: BuiltDisk, backed: tuple[Repository, Snapshot], tmp_path: Path
) -> None:
    need_tools("resize2fs", "sgdisk")
    repo, snap = backed
    part = disk.partitions[1]
    # room for btrfs whole once ext4 shrinks: accepted, btrfs untouched
    target = tmp_path / "smaller.img"
    with target.open("wb") as f:
        f.truncate(disk.size - 48 * MiB)
    result = restore(repo, snap, str(target), confirm=lambda _: True, scratch=str(tmp_path))
    assert result.grown and "shrunk" in result.grown
    table = json.loads(sh("sfdisk", "--json", target))["partitiontable"]["partitions"]
    assert table[1]["size"] * 512 == part.size
    moved = extract(target, table[1]["start"] * 512, part.size, tmp_path / "moved.img")
    fsck(moved, "btrfs")
    expected = _seen(disk.path, part.offset, part.size, tmp_path / "a")
    assert _seen(moved, 0, part.size, tmp_path / "b") == expected
    # no room for btrfs whole: refused before anything is written, saying why
    tiny = tmp_path / "tiny.img"
    with tiny.open("wb") as f:
        f.truncate(part.size)
    proc = blockvault("-r", repo.location, "restore", snap.id, tiny, "--yes")
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert "\n" not in line and "btrfs shrinks only while mounted" in line, line
    assert "partition 2" in line and "nothing was written" in line
    assert not any(tiny.read_bytes()[: 64 * 1024])
