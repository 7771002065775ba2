"""XFS end to end: a GPT disk with an ext4 and an XFS partition, built by sfdisk, mke2fs
and mkfs.xfs and filled through the kernel, backed up, restored, browsed and mounted.

Oracles: ``xfs_repair -n``, the kernel's XFS driver reading the restored partition,
``partclone.xfs``'s block bitmap of source and copy, ``filefrag`` for where the
preallocated file lies, and the source tree itself. Needs root (loop mounts).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository, Snapshot
from blockvault_demo.sample import (
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    make_tree,
    manifest,
)
from tests.conftest import IS_ROOT, blockvault, need_tools, sh
from tests.disk.fs.fsimages import partclone_image
from tests.fstree import extract, fsck, tree

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="filling and reading XFS needs loop mounts (root)"),
]

MiB = 1024 * 1024
XFS_PART = 2
PREALLOC = "var/lib/prealloc.img"  # fallocate'd: unwritten extents over stale bytes
STALE = b"stale bytes a deleted file left behind "


@dataclass(frozen=True)
class Backed:
    disk: BuiltDisk
    tree: Path
    repo: Repository
    snapshot: Snapshot
    work: Path

    @property
    def part(self) -> tuple[int, int]:
        p = self.disk.partitions[XFS_PART - 1]
        return p.offset, p.size


def _unwritten_blocks(path: Path) -> list[tuple[int, int]]:
    """``(first block, count)`` of each unwritten extent, as filefrag (FIEMAP) says."""
    out = sh("filefrag", "-e", "-b4096", path)
    found = re.findall(r":\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):.*unwritten", out)
    return [(int(a), int(b) - int(a) + 1) for a, b in found]


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    need_tools("mkfs.xfs", "xfs_repair", "partclone.xfs", "filefrag", "sgdisk")
    work = tmp_path_factory.mktemp("xfs")
    tree_dir = work / "tree"
    make_tree(tree_dir, 12 * MiB, seed=18)
    disk = build_disk(
        DiskSpec(
            "gpt",
            400 * MiB,
            [PartitionSpec("ext4", 32 * MiB, "boot"), PartitionSpec("xfs", 0, "data", tree_dir)],
        ),
        work / "disk.img",
    )
    offset, size = disk.partitions[XFS_PART - 1].offset, disk.partitions[XFS_PART - 1].size
    # preallocate a file, then write stale bytes under it behind the filesystem's back:
    # XFS reads it as zeros (unwritten extents), and so must blockvault
    loopdev = sh(
        "losetup", "--find", "--show", "-o", str(offset), "--sizelimit", str(size), disk.path
    ).strip()
    mnt = work / "mnt"
    mnt.mkdir()
    try:
        sh("mount", loopdev, mnt)
        try:
            (mnt / "var/lib").mkdir(parents=True, exist_ok=True)
            sh("fallocate", "-l", str(2 * MiB), mnt / PREALLOC)
            unwritten = _unwritten_blocks(mnt / PREALLOC)
        finally:
            sh("umount", mnt)
    finally:
        subprocess.run(["losetup", "-d", loopdev], check=False)
    assert unwritten, "fallocate made no unwritten extent"
    with open(disk.path, "r+b") as f:
        for first, count in unwritten:
            f.seek(offset + first * 4096)
            f.write((STALE * (count * 4096 // len(STALE) + 1))[: count * 4096])
    (tree_dir / "var/lib").mkdir(parents=True, exist_ok=True)
    (tree_dir / PREALLOC).write_bytes(bytes(2 * MiB))  # what the kernel reads there
    repo = Repository.init(str(work / "repo"), chunk_size=256 * 1024)
    return Backed(disk, tree_dir, repo, backup(repo, str(disk.path)), work)


def _partition(backed: Backed, image: Path, name: str) -> Path:
    offset, size = backed.part
    return extract(image, offset, size, backed.work / name)


def test_backup_records_xfs_and_stores_about_the_used_data(backed: Backed) -> None:
    record = backed.snapshot.partition(XFS_PART)
    assert record is not None and record.filesystem == "xfs"
    source = _partition(backed, backed.disk.path, "source-part.img")
    used = partclone_image(source, backed.work).used.total  # the outside oracle
    assert record.used_bytes == used
    assert used < backed.part[1] // 3  # the map is no raw span of the partition
    info = blockvault("-r", backed.repo.location, "info", "--json", backed.snapshot.id[:12])
    assert info.returncode == 0, info.stderr
    # compressed and deduplicated: the whole disk stores less than the XFS's used data
    assert json.loads(info.stdout)["stored_bytes"] < used


def test_restore_is_clean_with_the_same_tree_and_used_blocks(backed: Backed) -> None:
    target = backed.work / "restored.img"
    target.write_bytes(b"")
    os.truncate(target, backed.disk.size)
    restore(backed.repo, backed.snapshot, str(target), confirm=lambda _: True)
    source = _partition(backed, backed.disk.path, "source.img")
    copy = _partition(backed, target, "copy.img")
    fsck(copy, "xfs")
    assert tree(copy, "xfs", backed.work / "copy-tree") == tree(
        source, "xfs", backed.work / "src-tree"
    )
    assert partclone_image(copy, backed.work).used == partclone_image(source, backed.work).used
    assert tree(copy, "xfs", backed.work / "copy-tree2") == manifest(backed.tree)


def test_restore_onto_a_larger_disk_keeps_the_xfs_size(backed: Backed) -> None:
    target = backed.work / "larger.img"
    target.write_bytes(b"")
    os.truncate(target, backed.disk.size + 64 * MiB)
    restore(backed.repo, backed.snapshot, str(target), confirm=lambda _: True)
    fsck(_partition(backed, target, "larger-part.img"), "xfs")


def test_restore_with_grow_grows_the_xfs_into_the_larger_partition(backed: Backed) -> None:
    target = backed.work / "grown.img"
    target.write_bytes(b"")
    os.truncate(target, backed.disk.size + 64 * MiB)
    restore(backed.repo, backed.snapshot, str(target), confirm=lambda _: True, grow=True)
    table = json.loads(sh("sfdisk", "--json", target))["partitiontable"]
    part = table["partitions"][XFS_PART - 1]
    offset, size = part["start"] * 512, part["size"] * 512
    assert size > backed.part[1] + 60 * MiB
    grown = extract(target, offset, size, backed.work / "grown-part.img")
    fsck(grown, "xfs")
    blocks = int(sh("xfs_db", "-r", "-c", "sb 0", "-c", "print dblocks", grown).split("=")[1])
    assert blocks * 4096 > size - 4 * MiB  # the filesystem fills its partition
    assert tree(grown, "xfs", backed.work / "grown-tree") == manifest(backed.tree)


def test_restore_onto_a_smaller_disk_says_xfs_cannot_shrink(backed: Backed) -> None:
    target = backed.work / "smaller.img"
    target.write_bytes(b"")
    os.truncate(target, backed.disk.size - 64 * MiB)
    done = blockvault(
        "-r", backed.repo.location, "restore", "--yes", backed.snapshot.id[:12], target
    )
    assert done.returncode != 0
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "partition 2 (xfs) cannot shrink" in line and "nothing was written" in line
    assert not any(target.read_bytes()[: 1 * MiB])  # nothing was written


def test_browse_ls_cat_find_extract(backed: Backed, tmp_path: Path) -> None:
    repo, snap = backed.repo.location, backed.snapshot.id[:12]
    listing = json.loads(blockvault("-r", repo, "ls", "-R", "--json", f"{snap}:2/").stdout)
    paths = {item["path"] for item in listing["entries"]}
    assert paths == {str(p.relative_to(backed.tree)) for p in backed.tree.rglob("*")}
    rel = "home/user/Documents/café-crème.txt"
    cat = subprocess.run(
        ["blockvault", "-r", repo, "cat", f"{snap}:2/{rel}"], capture_output=True, check=True
    )
    assert cat.stdout == (backed.tree / rel).read_bytes()
    prealloc = subprocess.run(
        ["blockvault", "-r", repo, "cat", f"{snap}:2/{PREALLOC}"], capture_output=True, check=True
    )
    assert prealloc.stdout == bytes(2 * MiB)  # not the stale bytes under it
    found = blockvault("-r", repo, "find", "-p", "2", "--json", "café-crème.txt")
    assert found.returncode == 0, found.stderr
    assert [(f["partition"], f["path"]) for f in json.loads(found.stdout)] == [(2, f"/{rel}")]
    out = tmp_path / "out"
    done = blockvault("-r", repo, "extract", f"{snap}:2/", out)
    assert done.returncode == 0, done.stderr
    assert manifest(out) == manifest(backed.tree)
    for rel_path in ("home", rel):
        src, dst = (backed.tree / rel_path).lstat(), (out / rel_path).lstat()
        assert (src.st_mode, src.st_mtime_ns, src.st_uid) == (
            dst.st_mode,
            dst.st_mtime_ns,
            dst.st_uid,
        )


def test_a_partclone_xfs_image_imports_as_a_browsable_xfs(backed: Backed, tmp_path: Path) -> None:
    source = _partition(backed, backed.disk.path, "import-source.img")
    image = tmp_path / "part.pcl"
    sh("partclone.xfs", "-c", "-q", "-s", source, "-o", image, "-L", tmp_path / "pc.log")
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    done = blockvault("-r", repo, "import", "--format", "partclone", image)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    done = blockvault("-r", repo, "extract", "latest:1/", out)
    assert done.returncode == 0, done.stderr
    assert manifest(out) == manifest(backed.tree)


def test_mount_shows_the_xfs_through_the_kernel(backed: Backed, tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    repo, snap = backed.repo.location, backed.snapshot.id[:12]
    done = blockvault("-r", repo, "mount", "--json", "--filesystems", snap, mnt)
    assert done.returncode == 0, done.stderr
    try:
        inner = {i["partition"]: i["how"] for i in json.loads(done.stdout)["inner"]}
        assert inner[XFS_PART] == "kernel"
        assert manifest(mnt / f"p{XFS_PART}") == manifest(backed.tree)
    finally:
        umount = blockvault("umount", mnt)
    assert umount.returncode == 0, umount.stderr
