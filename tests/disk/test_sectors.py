"""Sector size conversion of tables and FAT/NTFS boot sectors, on real images and loop devices."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from blockvault.disk import sectors
from blockvault.disk.device import open_device
from blockvault.disk.table import gpt, mbr
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk
from tests.conftest import need_tools, sh
from tests.fstree import extract, fsck, tree

MiB = 1 << 20


def convert_disk(disk: BuiltDisk, out: Path, new_ss: int) -> Path:
    """What restore does when the target has other sectors: copy the bytes, then convert."""
    sh("cp", "--sparse=always", disk.path, out)
    with open_device(out, write=True) as dev:
        table = (gpt.parse if disk.table == "gpt" else mbr.parse)(dev, disk.sector_size)
        assert table is not None
        done = sectors.convert_disk(dev, table, new_ss)
    assert len(done) == 4, done
    return out


def make_fat(disk: BuiltDisk, number: int, bits: str, content: Path, work: Path) -> None:
    """mkfs.fat with 4 KiB clusters (as an ESP for 4Kn disks needs) into partition ``number``."""
    p = disk.partitions[number - 1]
    vol = work / f"fat{number}.img"
    with open(vol, "wb") as f:
        f.truncate(p.size)
    sh("mkfs.fat", "-F", bits, "-s", "8", "-h", str(p.offset // 512), "-n", f"F{bits}", vol)
    sh("mcopy", "-s", "-m", "-i", vol, *content.iterdir(), "::/")
    sh(
        "dd",
        f"if={vol}",
        f"of={disk.path}",
        "bs=1M",
        f"seek={p.offset}",
        "oflag=seek_bytes",
        "conv=notrunc,sparse",
        "status=none",
    )


def sample(table: str, content: Path, work: Path) -> BuiltDisk:
    """FAT16, FAT32 (4 KiB clusters) and NTFS partitions holding ``content``."""
    spec = DiskSpec(
        table,
        300 * MiB,
        [
            PartitionSpec("empty", 20 * MiB, type="msdata" if table == "gpt" else "0e"),
            PartitionSpec("empty", 264 * MiB, type="msdata" if table == "gpt" else "0c"),
            PartitionSpec("ntfs", 0, label="NT", content=content),
        ],
    )
    disk = build_disk(spec, work / "src.img")
    make_fat(disk, 1, "16", content, work)
    make_fat(disk, 2, "32", content, work)
    fs = ("fat16", "fat32", "ntfs")
    parts = tuple(replace(p, fs=f) for p, f in zip(disk.partitions, fs, strict=True))
    return replace(disk, partitions=parts)


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("content") / "tree"
    (root / "docs").mkdir(parents=True)
    (root / "readme.txt").write_text("sector sizes\n" * 100)
    (root / "docs" / "big.bin").write_bytes(os.urandom(300 * 1024))
    (root / "docs" / "small.dat").write_bytes(os.urandom(5000))
    return root


def check_partitions(disk: BuiltDisk, converted: Path, tmp_path: Path) -> None:
    for p in disk.partitions:
        orig = extract(disk.path, p.offset, p.size, tmp_path / f"o{p.number}")
        copy = extract(converted, p.offset, p.size, tmp_path / f"c{p.number}")
        fsck(copy, p.fs)
        assert tree(copy, p.fs, tmp_path / f"tc{p.number}") == tree(
            orig, p.fs, tmp_path / f"to{p.number}"
        )


@pytest.mark.parametrize("table", ["gpt", "mbr"])
def test_512_to_4096_verifies_on_a_4k_loop_device(
    table: str, content: Path, tmp_path: Path, loop: Callable[..., str]
) -> None:
    need_tools("sfdisk", "sgdisk", "mkfs.fat", "mkntfs", "fsck.vfat", "ntfsfix", "mcopy")
    disk = sample(table, content, tmp_path)
    converted = convert_disk(disk, tmp_path / "4k.img", 4096)
    dev = loop(converted, sector_size=4096)
    if table == "gpt":
        out = sh("sgdisk", "-v", dev)
        assert "No problems found" in out, out
    sh("sfdisk", "--verify", dev)
    listed = sh("sfdisk", "--json", dev)
    assert '"sectorsize": 4096' in listed
    check_partitions(disk, converted, tmp_path)
    # the kernel reads the NTFS volume through the 4096-byte device as ntfs-3g sees it
    ntfs = disk.partitions[-1]
    part = loop(converted, sector_size=4096, offset=ntfs.offset, size=ntfs.size)
    sh("ntfsfix", "-n", part)


def test_4096_to_512_roundtrip(content: Path, tmp_path: Path, loop: Callable[..., str]) -> None:
    need_tools("sfdisk", "sgdisk", "mkfs.fat", "mkntfs", "fsck.vfat", "ntfsfix", "mcopy")
    disk = sample("gpt", content, tmp_path)
    up = convert_disk(disk, tmp_path / "4k.img", 4096)
    up_disk = BuiltDisk(up, disk.table, disk.size, 4096, disk.partitions)
    back = convert_disk(up_disk, tmp_path / "512.img", 512)
    assert "No problems found" in sh("sgdisk", "-v", back)
    sh("sfdisk", "--verify", back)
    check_partitions(disk, back, tmp_path)


def test_refusals_name_the_reason(tmp_path: Path) -> None:
    need_tools("mkfs.fat")
    vol = tmp_path / "f.img"
    vol.write_bytes(bytes(8 * MiB))
    # 1 reserved sector, 512-byte clusters: neither fits 4096-byte sectors
    subprocess.run(
        ["mkfs.fat", "-F", "16", "-R", "1", "-s", "1", str(vol)], check=True, capture_output=True
    )
    boot = vol.read_bytes()[:512]
    reason = sectors.check_fat(boot, 4096)
    assert reason is not None and ("clusters" in reason)
    with pytest.raises(ValueError):
        sectors.convert_fat(vol.read_bytes()[: sectors.fat_metadata_size(boot)], 4096, 0)
    disk = build_disk(
        DiskSpec("mbr", 8 * MiB, [PartitionSpec("raw", 3 * MiB + 512)], first_offset=512 * 9),
        tmp_path / "odd.img",
    )
    with open_device(disk.path) as src:
        table = mbr.parse(src, 512)
    assert table is not None
    reason = sectors.check_table(table, 4096)
    assert reason is not None and "partition 1" in reason


def test_a_disk_that_cannot_convert_is_refused_before_writing(tmp_path: Path) -> None:
    need_tools("sfdisk", "mkfs.fat")
    # mkfs.fat's default for 12 MiB puts the first cluster at byte 43008, mid 4096-byte sector
    spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("fat16", 12 * MiB, "SMALL")])
    disk = build_disk(spec, tmp_path / "d.img")
    before = disk.path.read_bytes()
    with open_device(disk.path, write=True) as dev:
        table = gpt.parse(dev, 512)
        assert table is not None
        reason = sectors.check_disk(dev, table, 4096)
        assert reason is not None and reason.startswith("partition 1 (FAT)")
        with pytest.raises(ValueError, match="partition 1"):
            sectors.convert_disk(dev, table, 4096)
    assert disk.path.read_bytes() == before


def sgdisk_ext4(path: Path, block: int) -> tuple[int, int]:
    """sgdisk's last partition ends at the last usable 512-byte LBA, mid 4096-byte sector."""
    with open(path, "wb") as f:
        f.truncate(40 * MiB)
    sh("sgdisk", "-n", "1:2048:0", path)
    start = 2048 * 512
    last = int(sh("sgdisk", "-i", "1", path).split("Last sector: ")[1].split()[0])
    size = (last + 1) * 512 - start
    sh(
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        str(block),
        "-E",
        f"offset={start}",
        path,
        str(size // block),
    )
    return start, size


def test_last_partition_ending_mid_sector_is_trimmed_when_its_fs_ends_before(
    tmp_path: Path, loop: Callable[..., str]
) -> None:
    need_tools("sgdisk", "mke2fs", "e2fsck")
    image = tmp_path / "d.img"
    start, size = sgdisk_ext4(image, 4096)
    assert size % 4096
    with open_device(image, write=True) as dev:
        table = gpt.parse(dev, 512)
        assert table is not None
        sectors.convert_disk(dev, table, 4096)
    dev4k = loop(image, sector_size=4096)
    assert "No problems found" in sh("sgdisk", "-v", dev4k)
    part = loop(image, sector_size=4096, offset=start, size=size // 4096 * 4096)
    sh("e2fsck", "-fn", part)


def test_ext_with_blocks_smaller_than_the_new_sector_is_refused(tmp_path: Path) -> None:
    need_tools("sgdisk", "mke2fs")
    image = tmp_path / "d.img"
    sgdisk_ext4(image, 1024)
    with open_device(image) as dev:
        table = gpt.parse(dev, 512)
        assert table is not None
        # the 1 KiB-block filesystem also fills the odd tail: either reason is a refusal
        assert sectors.check_disk(dev, table, 4096) is not None
    sh("sgdisk", "-d", "1", "-n", "1:2048:+16M", image)
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-E", "offset=1048576", image, "16384")
    with open_device(image) as dev:
        table = gpt.parse(dev, 512)
        assert table is not None
        reason = sectors.check_disk(dev, table, 4096)
    assert reason is not None and "1024-byte blocks" in reason


@pytest.mark.parametrize("xfs_sector", [512, 4096])
def test_xfs_moves_only_when_made_for_sectors_as_large(tmp_path: Path, xfs_sector: int) -> None:
    need_tools("sgdisk", "mkfs.xfs")
    image = tmp_path / "d.img"
    with image.open("wb") as f:
        f.truncate(400 * MiB)
    sh("sgdisk", "-n", "1:2048:0", image)
    part = tmp_path / "p.img"
    with part.open("wb") as f:
        f.truncate(400 * MiB - 2 * MiB)  # leaves room for the backup GPT
    sh("mkfs.xfs", "-q", "-f", "-s", f"size={xfs_sector}", part)
    sh("dd", f"if={part}", f"of={image}", "bs=1M", "seek=1", "conv=sparse,notrunc", "status=none")
    with open_device(image) as dev:
        table = gpt.parse(dev, 512)
        assert table is not None
        reason = sectors.check_disk(dev, table, 4096)
    if xfs_sector == 512:
        assert reason is not None and "(xfs): it was made for 512-byte sectors" in reason
    else:
        assert reason is None
