"""Restore and clone onto a smaller disk, and --grow-partition of a partition others follow.

Real sample disks (sfdisk/sgdisk tables, mkfs), real resize2fs/ntfsresize on the scratch
copies; every result checked with sgdisk -v / sfdisk --verify, fsck and file trees.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from blockvault.errors import UsageError
from blockvault.pipeline.backup import backup
from blockvault.pipeline.clone import clone
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.fstree import extract, fsck, hidden_sectors, tree

MiB = 1024 * 1024


def _gpt_disk(tmp_path: Path) -> BuiltDisk:
    make_tree(tmp_path / "tree", 2 * MiB, seed=5)
    spec = DiskSpec(
        "gpt",
        72 * MiB,
        [
            PartitionSpec("fat12", 8 * MiB, label="ESP", content=tmp_path / "tree"),
            PartitionSpec("ext4", 28 * MiB, content=tmp_path / "tree"),
            PartitionSpec("ntfs", 0, content=tmp_path / "tree"),
        ],
    )
    return build_disk(spec, tmp_path / "disk.img")


def _target(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _parts(image: Path) -> list[tuple[int, int]]:
    table = json.loads(sh("sfdisk", "--json", image))["partitiontable"]
    unit = int(table.get("sectorsize", 512))
    return [(p["start"] * unit, p["size"] * unit) for p in table["partitions"]]


def _same_files(disk: BuiltDisk, target: Path, work: Path) -> None:
    """Every partition of ``target`` checks clean and holds the source's files."""
    placed = _parts(target)
    assert len(placed) == len(disk.partitions)
    for n, (part, (offset, size)) in enumerate(zip(disk.partitions, placed, strict=True)):
        copy = extract(target, offset, size, work / f"copy{n}.img")
        fsck(copy, part.fs)
        source = extract(disk.path, part.offset, part.size, work / f"source{n}.img")
        assert tree(copy, part.fs, work / f"a{n}") == tree(source, part.fs, work / f"b{n}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_root
@pytest.mark.parametrize("how", ["restore", "clone"])
def test_gpt_onto_smaller_disk(tmp_path: Path, how: str) -> None:
    need_tools("resize2fs", "ntfsresize", "sgdisk")
    disk = _gpt_disk(tmp_path)
    target = _target(tmp_path / "small.img", 48 * MiB)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if how == "restore":
        repo = Repository.init(str(tmp_path / "repo"))
        snap = backup(repo, str(disk.path))
        result = restore(repo, snap, str(target), confirm=lambda _: True, scratch=str(scratch))
        report = result.grown
    else:
        done = clone(str(disk.path), str(target), confirm=lambda _: True, scratch=str(scratch))
        report = done.grown
    assert report and "shrunk" in report
    assert target.stat().st_size == 48 * MiB
    assert "No problems found" in sh("sgdisk", "-v", target)
    placed = _parts(target)
    assert placed[0] == (disk.partitions[0].offset, disk.partitions[0].size)  # ESP kept
    assert placed[1][1] < disk.partitions[1].size and placed[2][1] < disk.partitions[2].size
    assert all(start % MiB == 0 for start, _ in placed)
    ntfs_start = placed[2][0]
    assert ntfs_start != disk.partitions[2].offset  # moved: its hidden sectors follow it
    moved = extract(target, ntfs_start, placed[2][1], tmp_path / "moved-ntfs.img")
    assert hidden_sectors(moved, "ntfs") == ntfs_start // 512
    _same_files(disk, target, tmp_path)
    assert list(scratch.iterdir()) == []


@needs_root
def test_mbr_restore_onto_smaller_disk(tmp_path: Path) -> None:
    need_tools("resize2fs", "ntfsresize")
    make_tree(tmp_path / "tree", 2 * MiB, seed=7)
    spec = DiskSpec(
        "mbr",
        64 * MiB,
        [
            PartitionSpec("ext4", 30 * MiB, content=tmp_path / "tree"),
            PartitionSpec("ntfs", 0, content=tmp_path / "tree"),
        ],
    )
    disk = build_disk(spec, tmp_path / "disk.img")
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(disk.path))
    target = _target(tmp_path / "small.img", 40 * MiB)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    restore(repo, snap, str(target), confirm=lambda _: True, scratch=str(scratch))
    sh("sfdisk", "--verify", target)
    _same_files(disk, target, tmp_path)
    assert list(scratch.iterdir()) == []


@needs_root
def test_refused_when_the_data_cannot_fit(tmp_path: Path) -> None:
    disk = _gpt_disk(tmp_path)
    target = _target(tmp_path / "tiny.img", 20 * MiB)
    before = _digest(target)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(UsageError, match=r"(\d+) bytes are missing") as exc:
        clone(str(disk.path), str(target), confirm=lambda _: True, scratch=str(scratch))
    assert int(str(exc.value).split(" bytes are missing")[0].split()[-1]) > 0
    assert _digest(target) == before
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(disk.path))
    with pytest.raises(UsageError, match="bytes are missing"):
        restore(repo, snap, str(target), confirm=lambda _: True, scratch=str(scratch))
    assert _digest(target) == before
    assert list(scratch.iterdir()) == []


@needs_root
def test_shrinks_without_scratch_in_a_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --scratch: the scratch files go to $TMPDIR (the first place with room), the
    result says so, and they are gone afterwards."""
    need_tools("resize2fs", "ntfsresize", "sgdisk")
    disk = _gpt_disk(tmp_path)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    target = _target(tmp_path / "small.img", 48 * MiB)
    done = clone(str(disk.path), str(target), confirm=lambda _: True)
    assert done.grown and "shrunk" in done.grown and f"scratch files in {tmp}" in done.grown
    assert list(tmp.iterdir()) == []
    assert "No problems found" in sh("sgdisk", "-v", target)
    _same_files(disk, target, tmp_path)
    again = _target(tmp_path / "again.img", 48 * MiB)
    proc = blockvault("clone", disk.path, again, "--yes", env={"TMPDIR": str(tmp)})
    assert proc.returncode == 0 and f"scratch files in {tmp}" in proc.stdout, proc.stderr
    assert list(tmp.iterdir()) == []


@needs_root
def test_too_small_scratch_is_refused(tmp_path: Path) -> None:
    disk = _gpt_disk(tmp_path)
    target = _target(tmp_path / "small.img", 48 * MiB)
    before = _digest(target)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", tiny)
    try:
        proc = blockvault("clone", disk.path, target, "--yes", "--scratch", tiny)
    finally:
        sh("umount", tiny)
    assert proc.returncode == 2 and "bytes free" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _digest(target) == before


@needs_root
@pytest.mark.parametrize("how", ["restore", "clone"])
def test_grow_middle_partition_moves_the_next(tmp_path: Path, how: str) -> None:
    need_tools("resize2fs", "sgdisk")
    make_tree(tmp_path / "tree", 2 * MiB, seed=9)
    spec = DiskSpec(
        "gpt",
        48 * MiB,
        [
            PartitionSpec("ext4", 20 * MiB, content=tmp_path / "tree"),
            PartitionSpec("ntfs", 0, content=tmp_path / "tree"),
        ],
    )
    disk = build_disk(spec, tmp_path / "disk.img")
    target = _target(tmp_path / "big.img", 80 * MiB)
    if how == "restore":
        repo = Repository.init(str(tmp_path / "repo"))
        snap = backup(repo, str(disk.path))
        grown = restore(repo, snap, str(target), confirm=lambda _: True, grow_partition=1).grown
    else:
        done = clone(
            str(disk.path), str(target), confirm=lambda _: True, grow_partition=1, new_ids=True
        )
        grown = done.grown
    assert grown and "ext4" in grown
    assert "No problems found" in sh("sgdisk", "-v", target)
    guid = [line for line in sh("sgdisk", "-p", disk.path).splitlines() if "GUID" in line]
    new_guid = [line for line in sh("sgdisk", "-p", target).splitlines() if "GUID" in line]
    assert (guid == new_guid) == (how == "restore")  # --new-ids survives the grow
    (s1, n1), (s2, n2) = _parts(target)
    assert s1 == disk.partitions[0].offset and n1 > disk.partitions[0].size + 30 * MiB
    assert n2 == disk.partitions[1].size and s2 == s1 + n1
    _same_files(disk, target, tmp_path)


@needs_root
def test_clone_grow_keeps_new_ids(tmp_path: Path) -> None:
    """--grow rewrites the table: the new GUIDs of --new-ids must survive it."""
    need_tools("resize2fs", "sgdisk")
    disk = _gpt_disk(tmp_path)
    target = _target(tmp_path / "big.img", 100 * MiB)
    clone(str(disk.path), str(target), confirm=lambda _: True, grow=True, new_ids=True)
    assert "No problems found" in sh("sgdisk", "-v", target)
    for args in (("-p",), ("-i", "3")):
        old = [x for x in sh("sgdisk", *args, disk.path).splitlines() if "GUID" in x]
        new = [x for x in sh("sgdisk", *args, target).splitlines() if "GUID" in x]
        assert old and old != new
