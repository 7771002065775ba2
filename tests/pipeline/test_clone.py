"""Clone disk to disk and partition to partition with no repository in between.

Sample disks are built in fresh sparse files, so a clone into a fresh file must equal
the source byte for byte; fsck and the filesystems' own readers are the other oracles.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from blockvault.pipeline.clone import clone
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import IS_ROOT, blockvault, needs_root, sh
from tests.fstree import extract, family, fsck, ntfs_clusters, tree

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clone")


def _disk(workdir: Path, table: str) -> BuiltDisk:
    content = workdir / "tree"
    if not content.exists():
        make_tree(content, 3 * MiB, seed=7)
    spec = DiskSpec(
        table,
        48 * MiB,
        [
            PartitionSpec("ext4", 16 * MiB, label="root", content=content),
            PartitionSpec("fat16", 12 * MiB, label="data", content=content),
            PartitionSpec("ntfs", 0, label="win", content=content),
        ],
    )
    return build_disk(spec, workdir / f"{table}.img")


@pytest.fixture(scope="module")
def gpt_disk(workdir: Path) -> BuiltDisk:
    return _disk(workdir, "gpt")


@pytest.fixture(scope="module")
def mbr_disk(workdir: Path) -> BuiltDisk:
    return _disk(workdir, "mbr")


def check_copy(copy: Path, disk: BuiltDisk, tmp: Path) -> None:
    """fsck every filesystem of ``copy`` (at its own, maybe grown, size) and compare
    its files with the source's."""
    tmp.mkdir(exist_ok=True)
    table = json.loads(sh("sfdisk", "--json", copy))["partitiontable"]
    sizes = {p["start"] * 512: p["size"] * 512 for p in table["partitions"]}
    for part in disk.partitions:
        size = sizes[part.offset]
        mine = extract(copy, part.offset, size, tmp / f"c{part.number}.img")
        fsck(mine, part.fs)
        if family(part.fs) != "ntfs" or IS_ROOT:
            theirs = extract(disk.path, part.offset, part.size, tmp / f"s{part.number}.img")
            assert tree(mine, part.fs, tmp / f"tc{part.number}") == tree(
                theirs, part.fs, tmp / f"ts{part.number}"
            )


@pytest.mark.parametrize("table", ["gpt", "mbr"])
def test_clone_to_new_file_is_identical(
    table: str, gpt_disk: BuiltDisk, mbr_disk: BuiltDisk, tmp_path: Path
) -> None:
    disk = gpt_disk if table == "gpt" else mbr_disk
    target = tmp_path / "copy.img"
    result = clone(str(disk.path), str(target), verify=True)
    assert result.verified is True
    assert filecmp.cmp(disk.path, target, shallow=False)
    assert result.used_bytes < disk.size // 2  # only used blocks were read
    sh("sfdisk", "--verify", target)
    check_copy(target, disk, tmp_path)


def test_clone_to_larger_disk_moves_gpt_backup(gpt_disk: BuiltDisk, tmp_path: Path) -> None:
    target = tmp_path / "big.img"
    with open(target, "wb") as f:
        f.truncate(gpt_disk.size + 32 * MiB)
    proc = blockvault("clone", gpt_disk.path, target, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "GPT backup moved" in proc.stdout
    out = sh("sgdisk", "-v", target)
    assert "No problems found" in out, out
    check_copy(target, gpt_disk, tmp_path)


def test_refusals_write_nothing(gpt_disk: BuiltDisk, tmp_path: Path) -> None:
    same = blockvault("clone", gpt_disk.path, gpt_disk.path, "--yes")
    assert same.returncode == 2 and "is the source" in same.stderr, same.stderr
    assert "Traceback" not in same.stderr

    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(4 * MiB)  # the used bytes alone do not fit
    too_small = blockvault("clone", gpt_disk.path, small)
    assert too_small.returncode == 2 and "Traceback" not in too_small.stderr
    assert "nothing was written" in too_small.stderr, too_small.stderr
    assert small.read_bytes().count(0) == small.stat().st_size

    full = tmp_path / "full.img"
    clone(str(gpt_disk.path), str(full))
    before = full.stat().st_mtime_ns
    asked = blockvault("clone", gpt_disk.path, full)
    assert asked.returncode == 2 and "--yes" in asked.stderr, asked.stderr
    assert full.stat().st_mtime_ns == before


@needs_root
def test_partition_to_partition_and_overlap(gpt_disk: BuiltDisk, tmp_path: Path, loop) -> None:
    root = gpt_disk.by_label("root")
    target_disk = tmp_path / "target.img"
    with open(target_disk, "wb") as f:
        f.truncate(gpt_disk.size)
    source = loop(gpt_disk.path, offset=root.offset, size=root.size)
    target = loop(target_disk, offset=root.offset, size=root.size)
    result = clone(source, target, verify=True)
    assert result.verified is True
    copy = extract(target_disk, root.offset, root.size, tmp_path / "p.img")
    fsck(copy, root.fs)
    theirs = extract(gpt_disk.path, root.offset, root.size, tmp_path / "s.img")
    assert tree(copy, root.fs, tmp_path / "a") == tree(theirs, root.fs, tmp_path / "b")

    overlapping = loop(gpt_disk.path, offset=root.offset + MiB, size=root.size)
    proc = blockvault("clone", source, overlapping, "--yes")
    assert proc.returncode == 2 and "overlaps the source" in proc.stderr, proc.stderr


def test_grow_last_partition_ntfs(gpt_disk: BuiltDisk, mbr_disk: BuiltDisk, tmp_path: Path) -> None:
    for disk in (gpt_disk, mbr_disk):
        target = tmp_path / f"{disk.table}-big.img"
        with open(target, "wb") as f:
            f.truncate(disk.size + 32 * MiB)
        proc = blockvault("clone", disk.path, target, "--grow")
        assert proc.returncode == 0, proc.stderr
        if disk.table == "gpt":
            assert "No problems found" in sh("sgdisk", "-v", target)
        sh("sfdisk", "--verify", target)
        last = disk.partitions[-1]
        parts = json.loads(sh("sfdisk", "--json", target))["partitiontable"]["partitions"]
        grown = parts[-1]["size"] * 512
        assert grown >= last.size + 31 * MiB
        copy = extract(target, last.offset, grown, tmp_path / f"{disk.table}-grown.img")
        fsck(copy, last.fs)
        clusters, cluster = ntfs_clusters(copy)
        # the volume fills its partition: but for the backup boot sector, in whole clusters
        assert grown - 512 - cluster < clusters * cluster <= grown - 512
        check_copy(target, disk, tmp_path / disk.table)


def test_grow_refusals(gpt_disk: BuiltDisk, tmp_path: Path) -> None:
    target = tmp_path / "big.img"
    with open(target, "wb") as f:
        f.truncate(gpt_disk.size + 32 * MiB)
    proc = blockvault("clone", gpt_disk.path, target, "--grow-partition", "9")
    assert proc.returncode == 2 and "no partition 9" in proc.stderr, proc.stderr
    assert target.read_bytes().count(0) == target.stat().st_size  # nothing written

    same = tmp_path / "same.img"
    with open(same, "wb") as f:
        f.truncate(gpt_disk.size)
    proc = blockvault("clone", gpt_disk.path, same, "--grow")
    assert proc.returncode == 2 and "not larger" in proc.stderr, proc.stderr

    missing = tmp_path / "missing.img"  # created at the source's size, so not larger
    proc = blockvault("clone", gpt_disk.path, missing, "--grow")
    assert proc.returncode == 2 and "not larger" in proc.stderr, proc.stderr
    assert not missing.exists()  # a refused copy leaves no file behind


@needs_root
def test_grow_partition_to_partition(gpt_disk: BuiltDisk, tmp_path: Path, loop) -> None:
    root = gpt_disk.by_label("root")
    source = loop(gpt_disk.path, offset=root.offset, size=root.size)
    target = tmp_path / "root-big.img"
    with open(target, "wb") as f:
        f.truncate(root.size * 2)
    result = clone(source, str(target), grow=True, verify=True)
    assert result.grown and result.verified
    fsck(target, root.fs)
    blocks = sh("dumpe2fs", "-h", target)
    count = int(next(x for x in blocks.splitlines() if x.startswith("Block count:")).split()[-1])
    size = int(next(x for x in blocks.splitlines() if x.startswith("Block size:")).split()[-1])
    assert count * size == root.size * 2
    theirs = extract(gpt_disk.path, root.offset, root.size, tmp_path / "s.img")
    assert tree(target, root.fs, tmp_path / "a") == tree(theirs, root.fs, tmp_path / "b")

    fat = gpt_disk.by_label("data")
    fat_source = loop(gpt_disk.path, offset=fat.offset, size=fat.size)
    fat_target = tmp_path / "fat-big.img"
    with open(fat_target, "wb") as f:
        f.truncate(fat.size * 2)
    proc = blockvault("clone", fat_source, fat_target, "--grow")  # FAT grows too (fat_grow.py)
    assert proc.returncode == 0 and "fat16 filesystem grown" in proc.stdout, proc.stderr
    fsck(fat_target, fat.fs)
    theirs = extract(gpt_disk.path, fat.offset, fat.size, tmp_path / "fs.img")
    assert tree(fat_target, fat.fs, tmp_path / "c") == tree(theirs, fat.fs, tmp_path / "d")

    swap = tmp_path / "raw.img"  # nothing blockvault can grow: refused before writing
    swap.write_bytes(bytes(MiB))
    with open(swap, "r+b") as f:
        f.write(b"\xffunknown")
    big = tmp_path / "raw-big.img"
    with open(big, "wb") as f:
        f.truncate(2 * MiB)
    proc = blockvault("clone", swap, big, "--grow", "--raw")
    assert proc.returncode == 2 and "no filesystem blockvault can grow" in proc.stderr, proc.stderr
    assert big.read_bytes().count(0) == 2 * MiB


@needs_root
def test_mounted_source_refused_unless_read_only(
    gpt_disk: BuiltDisk, tmp_path: Path, loop, mounted
) -> None:
    work = tmp_path / "src.img"
    work.write_bytes(gpt_disk.path.read_bytes())
    root = gpt_disk.by_label("root")
    part = loop(work, offset=root.offset, size=root.size)
    mounted(part, tmp_path / "mnt")
    target = tmp_path / "copy.img"
    proc = blockvault("clone", work, target)
    assert proc.returncode == 2 and "--allow-mounted" in proc.stderr, proc.stderr
    assert not target.exists()
    sh("mount", "-o", "remount,ro", tmp_path / "mnt")
    proc = blockvault("clone", work, target, "--verify")
    assert proc.returncode == 0, proc.stderr
