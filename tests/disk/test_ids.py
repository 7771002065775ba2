"""--new-ids on a real disk image: every id changes, nothing else does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from blockvault.disk import ids
from blockvault.disk.device import open_device
from blockvault.disk.fs.c_ntfs import c_ntfs
from blockvault.disk.table import gpt, mbr
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk
from tests.conftest import IS_ROOT, need_tools, sh
from tests.fstree import extract, fsck, tree

MiB = 1 << 20


def fs_uuid(disk: BuiltDisk, number: int) -> str:
    p = disk.partitions[number - 1]
    out = sh("blkid", "-p", "-o", "value", "-s", "UUID", "-O", str(p.offset), disk.path)
    return out.strip()


def table_ids(path: Path) -> tuple[str, list[str]]:
    table = json.loads(sh("sfdisk", "--json", path))["partitiontable"]
    return table["id"], [p.get("uuid", "") for p in table["partitions"]]


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("content") / "tree"
    (root / "dir").mkdir(parents=True)
    (root / "a.txt").write_text("identity\n" * 50)
    (root / "dir" / "b.bin").write_bytes(os.urandom(100_000))
    return root


@pytest.mark.skipif(not IS_ROOT, reason="tune2fs runs on a loop device over the partition")
@pytest.mark.parametrize("table", ["gpt", "mbr"])
def test_new_ids_change_every_id_and_keep_the_files(
    table: str, content: Path, tmp_path: Path
) -> None:
    need_tools("sfdisk", "blkid", "tune2fs", "mkfs.fat", "mkntfs", "fsck.vfat", "ntfsfix")
    spec = DiskSpec(
        table,
        72 * MiB,
        [
            PartitionSpec("ext4", 16 * MiB, "ROOT", content),
            PartitionSpec("fat32", 36 * MiB, "ESP", content),
            PartitionSpec("ntfs", 0, "DATA", content),
        ],
    )
    disk = build_disk(spec, tmp_path / "disk.img")
    before_table = table_ids(disk.path)
    before_fs = [fs_uuid(disk, n) for n in (1, 2, 3)]
    trees = [
        tree(
            extract(disk.path, p.offset, p.size, tmp_path / f"o{p.number}"),
            p.fs,
            tmp_path / f"t{p.number}",
        )
        for p in disk.partitions
    ]
    with open_device(disk.path, write=True) as dev:
        parsed = (gpt.parse if table == "gpt" else mbr.parse)(dev, 512)
        changed = ids.renew_ids(dev, parsed)
    assert len(changed) == 4, changed

    after_table = table_ids(disk.path)
    assert after_table[0] != before_table[0]
    if table == "gpt":
        assert all(a != b for a, b in zip(after_table[1], before_table[1], strict=True))
        assert "No problems found" in sh("sgdisk", "-v", disk.path)
    sh("sfdisk", "--verify", disk.path)
    after_fs = [fs_uuid(disk, n) for n in (1, 2, 3)]
    assert all(a and a != b for a, b in zip(after_fs, before_fs, strict=True)), (
        before_fs,
        after_fs,
    )
    for p, expected in zip(disk.partitions, trees, strict=True):
        copy = extract(disk.path, p.offset, p.size, tmp_path / f"c{p.number}")
        fsck(copy, p.fs)
        assert tree(copy, p.fs, tmp_path / f"u{p.number}") == expected


def test_table_ids_are_new_and_well_formed(tmp_path: Path) -> None:
    need_tools("sfdisk")
    disk = build_disk(DiskSpec("gpt", 8 * MiB, [PartitionSpec("raw", 0)]), tmp_path / "d.img")
    with open_device(disk.path) as dev:
        table = gpt.parse(dev, 512)
    assert table is not None
    renewed = ids.new_table_ids(table)
    assert renewed.disk_id != table.disk_id
    assert renewed.partitions[0].uuid != table.partitions[0].uuid
    assert renewed.partitions[0].start == table.partitions[0].start


def test_a_serial_never_goes_outside_its_partition(tmp_path: Path) -> None:
    """An NTFS boot sector whose sector count points into the next partition (hostile or
    damaged) gets its new serial in the copies inside its own partition only."""
    need_tools("sfdisk", "mkntfs")
    spec = DiskSpec(
        "gpt", 32 * MiB, [PartitionSpec("ntfs", 16 * MiB, "DATA"), PartitionSpec("raw", 0)]
    )
    disk = build_disk(spec, tmp_path / "disk.img")
    ntfs_part, raw_part = disk.partitions
    with disk.path.open("r+b") as f:  # the backup "lies" 1 MiB into partition 2
        f.seek(ntfs_part.offset)
        boot = c_ntfs.NTFS_BOOT_SECTOR(f.read(512))
        boot.number_of_sectors = (raw_part.offset - ntfs_part.offset + MiB) // 512
        f.seek(ntfs_part.offset)
        f.write(boot.dumps())
    before = disk.path.read_bytes()
    with open_device(disk.path, write=True) as device:
        table = gpt.parse(device, 512)
        assert table is not None
        ids.renew_ids(device, table)
    after = disk.path.read_bytes()
    second = slice(raw_part.offset, raw_part.offset + raw_part.size)
    assert after[second] == before[second]
    serial = c_ntfs.NTFS_BOOT_SECTOR.fields["volume_serial_number"].offset
    first = ntfs_part.offset + serial
    assert after[first : first + 8] != before[first : first + 8]
