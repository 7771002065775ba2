"""Disks for the browse tests, built by the real tools, backed up once per session.

``multi``: GPT with FAT32, ext4 and NTFS, each holding a make_tree tree (the NTFS one
with symlinks and directories needs root for ntfs-3g; else it is flat), in a
repository with 64 KiB chunks so that chunk counts mean something.
``special``: ext4 on a whole disk (no table) with a large, a sparse and a
fragmented file, made fragmented by debugfs writing into the gaps left by deleted
files.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.pipeline.backup import backup
from blockvault.repo import Repository, Snapshot
from blockvault_demo.sample import (
    TREE_KINDS,
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    make_tree,
)
from tests.conftest import IS_ROOT

MiB = 1024 * 1024

# ntfs-3g mounts (NTFS trees with directories and symlinks) need root, FUSE and ntfs-3g
NTFS_MOUNTS = IS_ROOT and os.path.exists("/dev/fuse") and shutil.which("ntfs-3g") is not None


@dataclass(frozen=True)
class Backed:
    disk: BuiltDisk
    repo: Repository
    snapshot: Snapshot
    trees: dict[int, Path]  # partition number -> source tree


@pytest.fixture(scope="session")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    work = tmp_path_factory.mktemp("browse-multi")
    trees = {1: work / "fat", 2: work / "ext", 3: work / "ntfs"}
    make_tree(trees[1], 3 * MiB, seed=11, kinds=TREE_KINDS - {"symlink", "large"})
    make_tree(trees[2], 8 * MiB, seed=12)
    make_tree(trees[3], 4 * MiB, seed=13, kinds=TREE_KINDS - {"large"})
    disk = build_disk(
        DiskSpec(
            "gpt",
            160 * MiB,
            [
                PartitionSpec("fat32", 40 * MiB, "ESP", trees[1]),
                PartitionSpec("ext4", 64 * MiB, "root", trees[2]),
                PartitionSpec("ntfs", 0, "Data", trees[3]),
            ],
        ),
        work / "multi.img",
        # as root the ntfs-3g mount must work (a failure fails the tests, never skips them)
        ntfs_mount=NTFS_MOUNTS,
    )
    repo = Repository.init(str(work / "repo"), chunk_size=64 * 1024)
    return Backed(disk, repo, backup(repo, str(disk.path)), trees)


def _debugfs(image: Path, *commands: str) -> str:
    script = "\n".join(commands) + "\n"
    proc = subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input=script,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


@pytest.fixture(scope="session")
def special(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    work = tmp_path_factory.mktemp("browse-special")
    tree = work / "tree"
    (tree / "big").mkdir(parents=True)
    rng = random.Random(5)
    # fillers: deleted below (every other one) to leave 32 KiB gaps all over the disk
    (tree / "fill").mkdir()
    for n in range(120):
        (tree / "fill" / f"f{n:03d}").write_bytes(rng.randbytes(32 * 1024))
    (tree / "big" / "large.bin").write_bytes(rng.randbytes(24 * MiB))
    with open(tree / "sparse.img", "wb") as f:  # holes at the start, middle and end
        f.truncate(40 * MiB)
        for offset in (3 * MiB + 123, 17 * MiB, 30 * MiB + 4096):
            f.seek(offset)
            f.write(rng.randbytes(200_000))
    (tree / "small.txt").write_text("one small file\n")
    os.utime(tree / "small.txt", ns=(1_650_000_000_123_456_789, 1_650_000_000_123_456_789))
    disk = build_disk(
        DiskSpec("none", 96 * MiB, [PartitionSpec("ext4", 0, None, tree)]), work / "special.img"
    )
    fragmented = work / "fragmented.bin"
    fragmented.write_bytes(rng.randbytes(2 * MiB))
    _debugfs(
        disk.path,
        *(f"rm /fill/f{n:03d}" for n in range(0, 120, 2)),
        f"write {fragmented} /fragmented.bin",
    )
    for n in range(0, 120, 2):  # keep the oracle tree equal to the disk
        (tree / "fill" / f"f{n:03d}").unlink()
    (tree / "fragmented.bin").write_bytes(fragmented.read_bytes())
    repo = Repository.init(str(work / "repo"))
    return Backed(disk, repo, backup(repo, str(disk.path)), {1: tree})
