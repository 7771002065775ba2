"""Faults: backups and gc killed with SIGKILL at seeded points (frozen by their own
SIGSTOP at the Nth chunk written or deleted, then killed: no cleanup runs), a full
repository file system, and an in-place 5 % change of a real ext4 file system that
must add about the changed data, not a copy."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault_demo.sample import (
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    change_tree,
    make_tree,
)
from tests.conftest import blockvault as run
from tests.conftest import kill_when_stopped, sh
from tests.fstree import extract, fsck, tree

MiB = 1024 * 1024


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    work = tmp_path_factory.mktemp("faults")
    make_tree(work / "tree", 40 * MiB, seed=31)
    spec = DiskSpec("gpt", 96 * MiB, [PartitionSpec("ext4", 0, "root", work / "tree")])
    return build_disk(spec, work / "disk.img")


def consistent(repo: Path, disk: BuiltDisk, tmp: Path) -> None:
    """Every listed snapshot restores to the disk byte for byte; check passes."""
    assert run("-r", repo, "check", "--read-data").returncode == 0
    for snap in json.loads(run("-r", repo, "snapshots", "--json").stdout):
        target = tmp / "restored.img"
        target.unlink(missing_ok=True)
        assert run("-r", repo, "restore", snap["id"], target).returncode == 0
        assert sha(target) == sha(disk.path)


def test_killed_backups_and_gc_leave_a_consistent_repository(
    disk: BuiltDisk, tmp_path: Path
) -> None:
    rng = random.Random(1234)
    repo = tmp_path / "repo"
    assert run("-r", repo, "init", "--chunk-size", "256KiB").returncode == 0
    for attempt in range(4):
        command = "gc" if attempt == 2 else "backup"
        args = ["--margin", "0"] if command == "gc" else [str(disk.path)]
        if command == "gc":  # give gc something to delete: drop the manifests first
            for snap in json.loads(run("-r", repo, "snapshots", "--json").stdout):
                (repo / "snapshots" / snap["id"]).unlink()
        # odd attempts freeze at the second flush: chunks made durable, no manifest yet
        operation = "delete" if command == "gc" else "flush" if attempt % 2 else "write"
        spec = (
            "signal=STOP,every=2,operations=flush"
            if operation == "flush"
            else f"signal=STOP,every={rng.randint(5, 60)},operations={operation},under=data/"
        )
        assert kill_when_stopped(["blockvault", "-r", str(repo), command, *args], spec)
        # its marker would hold back gc (or, a gc's, make backups wait) for a long while
        assert run("-r", repo, "unlock").returncode == 0
        assert not list((repo / "sessions").glob("*")) and not list((repo / "gc").glob("*"))
        consistent(repo, disk, tmp_path)
    stored = len(list((repo / "data").rglob("*")))
    rerun = run("-r", repo, "backup", disk.path, "--json")
    assert rerun.returncode == 0, rerun.stderr
    stats = json.loads(rerun.stdout)["stats"]
    assert stats["new_chunks"] < stats["chunks"]  # it reused what the killed ones stored
    assert stored > 0
    consistent(repo, disk, tmp_path)


def test_full_repository_file_system(
    disk: BuiltDisk, tmp_path: Path, mounted: Callable[..., Path]
) -> None:
    point = mounted("tmpfs", tmp_path / "small", "-t", "tmpfs", "-o", "size=6m")
    repo = point / "repo"
    assert run("-r", repo, "init", "--chunk-size", "256KiB").returncode == 0
    proc = run("-r", repo, "backup", disk.path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(run("-r", repo, "snapshots", "--json").stdout) == []
    assert not list((repo / "snapshots").glob("*")) if (repo / "snapshots").exists() else True
    assert not list((repo / "sessions").glob("*"))  # the marker went too
    assert not [p for p in repo.rglob(".tmp-*")]
    assert run("-r", repo, "check").returncode == 0


def test_in_place_change_adds_about_the_changed_data(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    """Change 5 % of the files of a mounted ext4 (as between two days of use), back
    up again: the second snapshot stores at most 3x the changed bytes."""
    make_tree(tmp_path / "tree", 48 * MiB, seed=41)
    disk = build_disk(
        DiskSpec("gpt", 128 * MiB, [PartitionSpec("ext4", 0, "root", tmp_path / "tree")]),
        tmp_path / "disk.img",
    )
    repo = tmp_path / "repo"
    assert run("-r", repo, "init").returncode == 0  # the default chunk size
    first = json.loads(run("-r", repo, "backup", disk.path, "--json").stdout)
    first_copy = tmp_path / "first.img"
    sh("cp", "--sparse=always", disk.path, first_copy)
    part = disk.partitions[0]
    dev = loop(disk.path, offset=part.offset, size=part.size)
    point = mounted(dev, tmp_path / "mnt")
    changed = change_tree(point, 0.05, seed=2)
    sh("umount", point)
    second = json.loads(run("-r", repo, "backup", disk.path, "--json").stdout)
    added = second["stats"]["stored_bytes"]
    print(f"changed {changed.total} bytes; full {first['stats']['stored_bytes']}; added {added}")
    assert 0 < added < 3 * changed.total
    assert added < first["stats"]["stored_bytes"] / 4
    target = tmp_path / "restored.img"
    assert run("-r", repo, "restore", first["id"], target).returncode == 0
    assert sha(target) == sha(first_copy)
    # blocks freed by the change still hold old bytes in the source, which a snapshot
    # does not keep: compare the file systems, as e2fsck and debugfs read them
    target.unlink()
    assert run("-r", repo, "restore", second["id"], target).returncode == 0
    restored = extract(target, part.offset, part.size, tmp_path / "r.img")
    source = extract(disk.path, part.offset, part.size, tmp_path / "s.img")
    fsck(restored, "ext4")
    assert tree(restored, "ext4", tmp_path / "rt") == tree(source, "ext4", tmp_path / "st")
