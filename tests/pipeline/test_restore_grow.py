"""restore --grow onto a larger disk: table verified, grown filesystem checked, files equal."""

from __future__ import annotations

from pathlib import Path

from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import needs_root, sh
from tests.fstree import extract, fsck, tree

MiB = 1024 * 1024


@needs_root
def test_restore_grow_last_ext4_partition(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", 2 * MiB, seed=3)
    spec = DiskSpec(
        "mbr",
        32 * MiB,
        [
            PartitionSpec("fat12", 8 * MiB, content=tmp_path / "tree"),
            PartitionSpec("ext4", 0, content=tmp_path / "tree"),
        ],
    )
    disk = build_disk(spec, tmp_path / "disk.img")
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(disk.path))
    target = tmp_path / "big.img"
    with open(target, "wb") as f:
        f.truncate(disk.size + 24 * MiB)
    result = restore(repo, snap, str(target), grow=True)
    assert result.grown and "ext4" in result.grown
    sh("sfdisk", "--verify", target)
    ext = disk.partitions[-1]
    new_size = disk.size + 24 * MiB - ext.offset
    copy = extract(target, ext.offset, new_size, tmp_path / "ext.img")
    fsck(copy, ext.fs)
    header = sh("dumpe2fs", "-h", copy).splitlines()
    count = int(next(x for x in header if x.startswith("Block count:")).split()[-1])
    block = int(next(x for x in header if x.startswith("Block size:")).split()[-1])
    assert count * block > ext.size + 23 * MiB
    source = extract(disk.path, ext.offset, ext.size, tmp_path / "src.img")
    assert tree(copy, ext.fs, tmp_path / "a") == tree(source, ext.fs, tmp_path / "b")
    fat = disk.partitions[0]
    fat_copy = extract(target, fat.offset, fat.size, tmp_path / "fat.img")
    fsck(fat_copy, fat.fs)
