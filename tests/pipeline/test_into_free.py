"""clone --into-free: a new partition in a target disk's free space, the rest untouched.

Targets are real sfdisk-made disks whose free space is filled with random bytes
first (so nothing relies on zeros there). Oracles: sgdisk -v / sfdisk --verify,
sfdisk --json for the new entry, the filesystems' own fsck and readers for the
copy, and a hash of every existing partition's bytes before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.errors import DeviceError
from blockvault.events import Event, TaskAdvanced
from blockvault.pipeline.into_free import clone_into_free
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault, needs_root, sh
from tests.fstree import extract, fat_sectors, fsck, hidden_sectors, tree
from tests.pipeline.test_onto import finds_anything

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    work = tmp_path_factory.mktemp("into-free")
    make_tree(work / "tree", 2 * MiB, seed=11)
    spec = DiskSpec(
        "gpt",
        48 * MiB,
        [
            PartitionSpec("ext4", 16 * MiB, label="root", content=work / "tree"),
            PartitionSpec("fat16", 16 * MiB, label="data", content=work / "tree"),
            PartitionSpec("ntfs", 0, label="win", content=work / "tree"),
        ],
    )
    return build_disk(spec, work / "source.img")


def _target(path: Path, table: str, size: int = 64 * MiB) -> BuiltDisk:
    """A disk with one 10 MiB ext4 partition, the rest free and full of random bytes."""
    content = path.parent / "ttree"
    make_tree(content, MiB, seed=5)
    spec = DiskSpec(table, size, [PartitionSpec("ext4", 10 * MiB, label="a", content=content)])
    disk = build_disk(spec, path)
    end = disk.partitions[0].offset + disk.partitions[0].size
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(os.urandom(size - end - 64 * 512))  # keep the backup GPT
    return disk


def _digest(path: Path, offset: int, size: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(size)).hexdigest()


def _parts(path: Path) -> list[dict[str, object]]:
    parts: list[dict[str, object]] = json.loads(sh("sfdisk", "--json", path))["partitiontable"][
        "partitions"
    ]
    return parts


def _check_copy(target: Path, start: int, size: int, src: BuiltDisk, label: str, tmp: Path) -> None:
    part = src.by_label(label)
    mine = extract(target, start, size, tmp / f"{label}-copy.img")
    fsck(mine, part.fs)
    theirs = extract(src.path, part.offset, part.size, tmp / f"{label}-src.img")
    assert tree(mine, part.fs, tmp / f"{label}-a") == tree(theirs, part.fs, tmp / f"{label}-b")


@pytest.mark.parametrize("table", ["gpt", "mbr"])
def test_into_free_from_image_partition(table: str, source: BuiltDisk, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    disk = _target(target, table)
    kept = disk.partitions[0]
    before = _digest(target, kept.offset, kept.size)
    for number in (2, 1, 3):
        proc = blockvault("clone", source.path, target, "--into-free", "--partition", number)
        assert proc.returncode == 0, proc.stderr
        assert "new partition" in proc.stdout
    if table == "gpt":
        assert "No problems found" in sh("sgdisk", "-v", target)
    sh("sfdisk", "--verify", target)
    assert _digest(target, kept.offset, kept.size) == before
    parts = _parts(target)
    assert len(parts) == 4
    # first fit: data right after the existing partition, root after data, 1 MiB aligned
    data, root, win = parts[1], parts[2], parts[3]
    assert data["start"] == (kept.offset + kept.size) // 512
    assert data["size"] == source.by_label("data").size // 512
    assert root["start"] == data["start"] + data["size"]  # type: ignore[operator]
    if table == "gpt":
        assert (data["name"], root["name"]) == ("data", "root")
        assert data["type"] == source.by_label("data").type
    else:
        # FAT16 LBA, Linux, NTFS: mapped from the GPT types
        assert (data["type"], root["type"], win["type"]) == ("e", "83", "7")
    for entry, label in ((data, "data"), (root, "root"), (win, "win")):
        start, size = int(entry["start"]) * 512, int(entry["size"]) * 512  # type: ignore[call-overload]
        _check_copy(target, start, size, source, label, tmp_path)
        if label != "root":  # FAT and NTFS boot sectors count the sectors before them
            fs = source.by_label(label).fs
            assert hidden_sectors(tmp_path / f"{label}-copy.img", fs) == start // 512


@needs_root
def test_into_free_from_partition_device_with_grow(source: BuiltDisk, tmp_path: Path, loop) -> None:
    root = source.by_label("root")
    device = loop(source.path, offset=root.offset, size=root.size)
    target = tmp_path / "target.img"
    disk = _target(target, "mbr", 48 * MiB)
    kept = disk.partitions[0]
    before = _digest(target, kept.offset, kept.size)
    result = clone_into_free(device, str(target), grow=True, verify=True)
    assert result.verified is True and result.grown
    sh("sfdisk", "--verify", target)
    assert _digest(target, kept.offset, kept.size) == before
    new = _parts(target)[1]
    start, size = int(new["start"]) * 512, int(new["size"]) * 512  # type: ignore[call-overload]
    assert new["type"] == "83"  # the source's GPT Linux type, as an MBR byte
    assert (start, start + size) == (kept.offset + kept.size, 48 * MiB)  # the whole free extent
    copy = extract(target, start, size, tmp_path / "grown.img")
    header = sh("dumpe2fs", "-h", copy).splitlines()
    count = int(next(x for x in header if x.startswith("Block count:")).split()[-1])
    block = int(next(x for x in header if x.startswith("Block size:")).split()[-1])
    assert count * block == size
    _check_copy(target, start, size, source, "root", tmp_path)


def test_refusals_write_nothing(source: BuiltDisk, tmp_path: Path) -> None:
    small = tmp_path / "small.img"
    _target(small, "gpt", 24 * MiB)
    whole = small.read_bytes()
    proc = blockvault("clone", source.path, small, "--into-free", "--partition", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    need = source.by_label("data").size
    assert f"needs {need} bytes" in proc.stderr and "largest free extent" in proc.stderr
    assert small.read_bytes() == whole

    bare = tmp_path / "bare.img"
    with open(bare, "wb") as f:
        f.truncate(64 * MiB)
    proc = blockvault("clone", source.path, bare, "--into-free", "--partition", "2")
    assert proc.returncode == 2 and "has no partition table" in proc.stderr, proc.stderr
    assert bare.read_bytes().count(0) == 64 * MiB

    proc = blockvault("clone", source.path, source.path, "--into-free", "--partition", "1")
    assert proc.returncode == 2 and "is the source" in proc.stderr, proc.stderr

    proc = blockvault("clone", source.path, small, "--into-free")
    assert proc.returncode == 2 and "--partition N" in proc.stderr, proc.stderr

    proc = blockvault("clone", source.path, small, "--into-free", "--partition", "7")
    assert proc.returncode == 2 and "has no partition 7" in proc.stderr, proc.stderr
    assert small.read_bytes() == whole


@needs_root
def test_mounted_target_is_refused(source: BuiltDisk, tmp_path: Path, loop, mounted) -> None:
    target = tmp_path / "target.img"
    disk = _target(target, "gpt")
    kept = disk.partitions[0]
    mounted(loop(target, offset=kept.offset, size=kept.size), tmp_path / "mnt")
    proc = blockvault("clone", source.path, target, "--into-free", "--partition", "2")
    assert proc.returncode == 2 and "is mounted from it" in proc.stderr, proc.stderr
    assert len(_parts(target)) == 1


def test_into_free_grow_fat(source: BuiltDisk, tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    disk = _target(target, "gpt")
    kept = disk.partitions[0]
    before = _digest(target, kept.offset, kept.size)
    proc = blockvault("clone", source.path, target, "--into-free", "--partition", "2", "--grow")
    assert proc.returncode == 0 and "fat16 filesystem grown" in proc.stdout, proc.stderr
    assert "No problems found" in sh("sgdisk", "-v", target)
    assert _digest(target, kept.offset, kept.size) == before
    new = _parts(target)[1]
    start, size = int(new["start"]) * 512, int(new["size"]) * 512  # type: ignore[call-overload]
    assert start + size == 64 * MiB - 33 * 512  # up to the backup entries and header
    _check_copy(target, start, size, source, "data", tmp_path)
    assert fat_sectors(tmp_path / "data-copy.img") * 512 == size  # it fills the new partition


@needs_root
def test_partition_device_keeps_its_gpt_entry(source: BuiltDisk, tmp_path: Path, loop) -> None:
    """A loop device over a partition of an image names its entry: type, name, attributes."""
    data = source.by_label("data")
    device = loop(source.path, offset=data.offset, size=data.size)
    target = tmp_path / "target.img"
    _target(target, "gpt")
    result = clone_into_free(device, str(target))
    assert result.added and "partition 2" in result.added
    new = _parts(target)[1]
    assert (new["name"], new["type"]) == ("data", data.type)  # found through the loop's offset
    start, size = int(new["start"]) * 512, int(new["size"]) * 512  # type: ignore[call-overload]
    _check_copy(target, start, size, source, "data", tmp_path)


def fail_at_first_piece(error: BaseException) -> Callable[[Event], None]:
    """A reporter that raises ``error`` once the copy reports its first piece written:
    a deterministic stand-in for a failed write, a dead source or Ctrl-C."""

    def reporter(event: Event) -> None:
        if isinstance(event, TaskAdvanced):
            raise error

    return reporter


@pytest.mark.parametrize("label", ["data", "win"])  # a FAT16 and an NTFS boot sector
@pytest.mark.parametrize("failure", ["device", "interrupt"])
def test_a_copy_that_fails_half_way_adds_nothing_and_no_signature(
    label: str, failure: str, source: BuiltDisk, tmp_path: Path
) -> None:
    target = tmp_path / "target.img"
    _target(target, "gpt")
    number = source.by_label(label).number
    # where the new partition goes: the planner is deterministic, a twin shows it
    twin = tmp_path / "twin.img"
    shutil.copyfile(target, twin)
    clone_into_free(str(source.path), str(twin), partition=number)
    new = _parts(twin)[1]
    start, size = int(new["start"]) * 512, int(new["size"]) * 512  # type: ignore[call-overload]
    assert finds_anything(extract(twin, start, size, tmp_path / "whole.img"))  # the oracle sees one

    table = sh("sfdisk", "--dump", target)
    before = target.read_bytes()
    error = (
        DeviceError("injected write failure", path=str(target))
        if failure == "device"
        else KeyboardInterrupt()
    )
    with pytest.raises(type(error)) as failed:
        clone_into_free(
            str(source.path), str(target), partition=number, reporter=fail_at_first_piece(error)
        )
    if failure == "device":  # the one line the user reads says what is left
        assert str(failed.value).endswith(
            f"the partition table of {target} is as it was: nothing was added"
        ), failed.value
    after = target.read_bytes()
    assert sh("sfdisk", "--dump", target) == table
    assert after[:start] == before[:start] and after[start + size :] == before[start + size :]
    assert after[start : start + size] != before[start : start + size]  # it did copy a piece
    assert not finds_anything(extract(target, start, size, tmp_path / "half.img"))

    # the same job without the fault adds the partition
    clone_into_free(str(source.path), str(target), partition=number)
    assert _parts(target)[1]["start"] == new["start"]
    _check_copy(target, start, size, source, label, tmp_path)
    assert hidden_sectors(tmp_path / f"{label}-copy.img", source.by_label(label).fs) == start // 512
