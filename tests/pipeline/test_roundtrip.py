"""Backup -> restore -> compare, for every table type and filesystem, built by the real tools.

The sample disks are made in fresh sparse files, so every unused byte of the source is
zero: a restore into a fresh file must then reproduce the whole image byte for byte
(`cmp`-style), which checks every used block and the boot areas without trusting our
own maps. Filesystem checkers and the filesystems' own readers are the other oracles.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.pipeline.verify import verify
from blockvault.repo import Repository
from blockvault_demo.sample import (
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    demo_disk,
    make_tree,
)
from tests.conftest import IS_ROOT, sh
from tests.fstree import ext_blocks, extract, family, fsck, tree

MiB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    disk: BuiltDisk
    trees: dict[int, Path]  # partition number -> source tree


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roundtrip")


@pytest.fixture(scope="module")
def demo(workdir: Path) -> BuiltDisk:
    return demo_disk(workdir / "demo.img")


def same_bytes(a: Path, b: Path) -> bool:
    return filecmp.cmp(a, b, shallow=False)


def sfdisk_json(path: Path) -> dict[str, object]:
    table = json.loads(sh("sfdisk", "--json", path))["partitiontable"]
    table.pop("device", None)
    for p in table.get("partitions", []):
        p.pop("node", None)
    return table


def check_partitions(restored: Path, disk: BuiltDisk, tmp: Path, trees: bool = True) -> None:
    """fsck each filesystem of ``restored``; compare its files with the source's, both
    read by the filesystem's own tools (NTFS through ntfs-3g, so as root only)."""
    for part in disk.partitions:
        if family(part.fs) not in ("ext", "fat", "ntfs"):
            continue
        copy = extract(restored, part.offset, part.size, tmp / f"p{part.number}.img")
        fsck(copy, part.fs)
        if trees and (family(part.fs) != "ntfs" or IS_ROOT):
            source = extract(disk.path, part.offset, part.size, tmp / f"s{part.number}.img")
            assert tree(copy, part.fs, tmp / f"t{part.number}") == tree(
                source, part.fs, tmp / f"u{part.number}"
            )


def test_gpt_demo_disk_round_trip(demo: BuiltDisk, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(demo.path))
    assert snap.table == "gpt"
    assert [p.filesystem for p in snap.partitions] == ["fat32", "ext4", "swap", "ntfs"]
    # only used blocks were read: far less than the 256 MiB disk
    assert snap.stats.read_bytes < demo.size * 0.6
    restored = tmp_path / "restored.img"
    restore(repo, snap, str(restored))
    assert restored.stat().st_size == demo.size
    assert same_bytes(demo.path, restored)
    check_partitions(restored, demo, tmp_path, trees=False)
    assert verify(repo, [snap], against=str(demo.path)).ok


def test_demo_disk_file_trees(demo: BuiltDisk, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(demo.path))
    restored = tmp_path / "restored.img"
    restore(repo, snap, str(restored))
    check_partitions(restored, demo, tmp_path)


def test_second_backup_adds_almost_nothing(demo: BuiltDisk, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    first = backup(repo, str(demo.path))
    size_after_first = sum(f.stat().st_size for f in (tmp_path / "repo").rglob("*") if f.is_file())
    second = backup(repo, str(demo.path))
    size_after_second = sum(f.stat().st_size for f in (tmp_path / "repo").rglob("*") if f.is_file())
    assert second.stats.new_chunks == 0
    assert second.stats.stored_bytes == 0
    assert size_after_second - size_after_first < 64 * 1024  # one index + one manifest
    assert first.stats.new_chunks > 0


@pytest.mark.parametrize(
    ("table", "sector_size"),
    [("gpt", 512), ("gpt", 4096), ("mbr", 512), ("mbr", 4096), ("none", 512)],
)
def test_tables_round_trip(table: str, sector_size: int, tmp_path: Path) -> None:
    content = tmp_path / "content"
    make_tree(content, 6 * MiB, seed=3)
    if table == "none":
        parts = [PartitionSpec("ext4", 0, "whole", content)]
        logical = None
    elif table == "mbr":
        parts = [
            PartitionSpec("fat16", 40 * MiB, "BOOT", content),
            PartitionSpec("ext3", 40 * MiB, "one", content),
            PartitionSpec("ext2", 24 * MiB, "two", content),
            PartitionSpec("ntfs", 40 * MiB, "three", content),
        ]
        logical = 1
    else:
        parts = [
            # FAT32 on 4096-byte sectors needs about 256 MiB; FAT16 stands in there
            PartitionSpec(
                "fat32" if sector_size == 512 else "fat16", 64 * MiB, "ESP", content, "uefi"
            ),
            PartitionSpec("ext4", 48 * MiB, "root", content),
            PartitionSpec("raw", 1 * MiB, type="bios"),
            PartitionSpec("raw", 8 * MiB),
            PartitionSpec("fat12", 4 * MiB, "SMALL"),
        ]
        logical = None
    if sector_size == 4096 and not IS_ROOT and "--sector-size" not in sh("sfdisk", "--help"):
        pytest.skip("4096-byte sector tables need sfdisk --sector-size (util-linux 2.40) or root")
    disk = build_disk(
        DiskSpec(table, 192 * MiB, parts, sector_size=sector_size, logical_from=logical),
        tmp_path / "disk.img",
    )
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(disk.path))
    assert snap.sector_size == sector_size
    assert snap.table == table
    restored = tmp_path / "restored.img"
    restore(repo, snap, str(restored))
    assert same_bytes(disk.path, restored)
    if table != "none" and sector_size == 512:  # this sfdisk reads image files as 512 only
        assert sfdisk_json(restored) == sfdisk_json(disk.path)
    check_partitions(restored, disk, tmp_path)


def test_unused_space_left_alone_and_garbage_not_imaged(demo: BuiltDisk, tmp_path: Path) -> None:
    """Deleted data in the source is not imaged; unused target space keeps its bytes."""
    source = tmp_path / "dirty.img"
    sh("cp", "--sparse=always", demo.path, source)
    root = next(p for p in demo.partitions if p.fs == "ext4")
    part = extract(source, root.offset, root.size, tmp_path / "root.img")
    secret = os.urandom(4 * MiB)
    (tmp_path / "secret").write_bytes(secret)
    sh("debugfs", "-w", "-R", f"write {tmp_path / 'secret'} secret", part)
    sh("debugfs", "-w", "-R", "rm secret", part)
    with open(source, "r+b") as out:
        out.seek(root.offset)
        out.write(part.read_bytes())
    assert secret[:4096] in source.read_bytes()
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(source))
    stored = b"".join(
        f.read_bytes() for f in (tmp_path / "repo" / "data").rglob("*") if f.is_file()
    )
    assert secret[:4096] not in stored  # freed blocks are not read (and secret is random)
    target = tmp_path / "target.img"
    target.write_bytes(b"\xaa" * demo.size)
    restore(repo, snap, str(target), confirm=lambda _: True)
    data = target.read_bytes()
    assert data.count(b"\xaa" * 4096) > 1000  # unused blocks untouched
    check_partitions(target, demo, tmp_path, trees=False)
    assert verify(repo, [snap], against=str(target)).ok
    restore(repo, snap, str(target), confirm=lambda _: True, zero_unused=True)
    assert b"\xaa" * 512 not in target.read_bytes()[: demo.size - 19 * MiB]


def test_partition_only_backup_and_restore(demo: BuiltDisk, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(demo.path), partitions=[2])
    assert [p.number for p in snap.imaged_partitions] == [2]
    root = next(p for p in demo.partitions if p.number == 2)
    # the whole disk restores: table, boot areas and partition 2; other partitions empty
    disk = tmp_path / "disk.img"
    restore(repo, snap, str(disk))
    assert sfdisk_json(disk) == sfdisk_json(demo.path)
    with open(disk, "rb") as a, open(demo.path, "rb") as b:
        a.seek(root.offset)
        b.seek(root.offset)
        assert a.read(root.size) == b.read(root.size)
        esp = demo.partitions[0]
        a.seek(esp.offset)
        assert a.read(esp.size).count(0) == esp.size
    # one partition into a partition-sized file
    part = tmp_path / "p2.img"
    restore(repo, snap, str(part), partition=2)
    assert part.stat().st_size == root.size
    assert (
        part.read_bytes()
        == extract(demo.path, root.offset, root.size, tmp_path / "x.img").read_bytes()
    )
    fsck(part, "ext4")


def test_restore_onto_larger_disk_moves_gpt_backup(demo: BuiltDisk, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(demo.path))
    target = tmp_path / "big.img"
    with open(target, "wb") as f:
        f.truncate(demo.size + 64 * MiB)
    result = restore(repo, snap, str(target))
    assert result.gpt_moved
    verify_out = subprocess.run(["sgdisk", "-v", str(target)], capture_output=True, text=True)
    assert "No problems found" in verify_out.stdout, verify_out.stdout
    big, small = sfdisk_json(target), sfdisk_json(demo.path)
    assert big["partitions"] == small["partitions"]
    assert big["id"] == small["id"]
    assert int(big["lastlba"]) == (demo.size + 64 * MiB) // 512 - 34
    check_partitions(target, demo, tmp_path, trees=False)


def test_damaged_filesystem_is_imaged_raw_with_a_warning(demo: BuiltDisk, tmp_path: Path) -> None:
    from blockvault.events import Event, Warned

    source = tmp_path / "damaged.img"
    sh("cp", "--sparse=always", demo.path, source)
    root = next(p for p in demo.partitions if p.fs == "ext4")
    # the superblock claims 4x the blocks the partition has: set by debugfs on a copy
    # of the partition, whose first 4 KiB (boot block and superblock) then go back
    part = extract(source, root.offset, root.size, tmp_path / "root.img")
    blocks = ext_blocks(part)
    sh("debugfs", "-w", "-R", f"ssv blocks_count {blocks * 4}", part)
    damaged = subprocess.run(["dumpe2fs", "-h", part], capture_output=True, text=True)
    assert "superblock is corrupt" in damaged.stderr, damaged.stderr  # the tool sees it too
    with open(part, "rb") as copy, open(source, "r+b") as f:
        f.seek(root.offset)
        f.write(copy.read(4096))
    events: list[Event] = []
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(source), reporter=events.append)
    warnings = [e.message for e in events if isinstance(e, Warned)]
    assert any("partition 2" in w and "raw" in w for w in warnings), warnings
    assert snap.partition(2) is not None and snap.partition(2).filesystem == "raw"  # type: ignore[union-attr]
    restored = tmp_path / "restored.img"
    restore(repo, snap, str(restored))
    assert same_bytes(source, restored)
