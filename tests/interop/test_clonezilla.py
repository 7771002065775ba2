"""Clonezilla images made by Clonezilla itself (``ocs-sr savedisk`` in batch mode, run
in a private mount namespace: blockvault_demo/clonezilla.py) are imported, restored,
and compared with the disk that was imaged.

The disks are built on zeroed sparse files by mkfs and sfdisk, so a byte no
filesystem uses is zero in the original: the restored disk must then equal it byte for
byte over its whole length (every used block, the tables, the boot code in the MBR and
the gap after it, the rebuilt GPT backup and the recreated swap header), and each
filesystem's own checker must find it clean.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault_demo.clonezilla import save_with_ocs_sr
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.fstree import extract, fsck

MiB = 1024 * 1024

pytestmark = [needs_root]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cz-tree") / "tree"
    make_tree(root, 6 * MiB, seed=19)
    return root


def disk_of(table: str, tree: Path, work: Path) -> BuiltDisk:
    """ext4, FAT32, NTFS and swap (the last filling the disk, so a dos table's end is
    the disk's end), with boot code in the MBR and bytes in the gap after it as GRUB
    leaves them on an MBR disk."""
    spec = DiskSpec(
        table,
        160 * MiB,
        [
            PartitionSpec("ext4", 56 * MiB, label="root", content=tree),
            PartitionSpec("fat32", 40 * MiB, label="EFI", content=tree),
            PartitionSpec("ntfs", 32 * MiB, label="win", content=tree),
            PartitionSpec("swap", 0, label="sw"),
        ],
    )
    disk = build_disk(spec, work / f"{table}.img")
    rng = random.Random(table)
    with disk.path.open("r+b") as f:
        f.write(rng.randbytes(440))  # boot code before the disk signature
        if table == "mbr":
            f.seek(512)
            f.write(rng.randbytes(30 * 1024))  # a GRUB core image's place
    return disk


def repository(work: Path) -> Path:
    repo = work / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    return repo


def import_and_restore(repo: Path, image: Path, target: Path, *extra: str) -> dict[str, object]:
    done = blockvault("-r", repo, "import", image, "--json", *extra)
    assert done.returncode == 0, done.stderr
    snapshots = json.loads(done.stdout)
    assert len(snapshots) == 1
    snap = snapshots[0]
    restored = blockvault("-r", repo, "restore", snap["id"], target)
    assert restored.returncode == 0, restored.stderr
    return snap


def check_restored(disk: BuiltDisk, target: Path, work: Path) -> None:
    assert filecmp.cmp(disk.path, target, shallow=False), "restored disk differs"
    for part in disk.partitions:
        fsck(extract(target, part.offset, part.size, work / f"p{part.number}"), part.fs)


@pytest.mark.parametrize(
    ("table", "options"),
    [
        ("gpt", ("-z9", "-i", "2", "-gm")),  # zstd, split into 2 MB pieces, MD5SUMS
        ("mbr", ("-z1p",)),  # pigz, one file per partition
    ],
)
def test_ocs_sr_images_restore_identically(
    table: str, options: tuple[str, ...], tree: Path, tmp_path: Path
) -> None:
    need_tools("ocs-sr", "partclone.ntfs", "mkntfs")
    disk = disk_of(table, tree, tmp_path)
    image = save_with_ocs_sr(disk, tmp_path / "partimag", f"cz-{table}", options)
    if "-i" in options:
        assert sorted(p.name for p in image.glob("*ptcl-img*"))[:2] == [
            "sdz1.ext4-ptcl-img.zst.aa",
            "sdz1.ext4-ptcl-img.zst.ab",
        ]
    repo = repository(tmp_path)
    snap = import_and_restore(repo, image, tmp_path / "restored.img")
    parts = {p["number"]: p for p in snap["partitions"]}  # type: ignore[attr-defined]
    assert [parts[n]["filesystem"] for n in (1, 2, 3, 4)] == ["ext4", "fat32", "ntfs", "swap"]
    assert parts[4]["label"] == "sw"
    check_restored(disk, tmp_path / "restored.img", tmp_path)
    # browsing works on the imported snapshot: the filesystem type was recorded
    for number in (1, 2, 3):
        listed = blockvault("-r", repo, "ls", f"{snap['id']}:{number}/")
        assert listed.returncode == 0, listed.stderr
        assert all(name in listed.stdout for name in os.listdir(tree)), listed.stdout


@pytest.mark.parametrize("compression", ["-z0", "-z2", "-z5", "-z8"])  # none, bzip2, xz, lz4
def test_every_compression(compression: str, tmp_path: Path) -> None:
    need_tools("ocs-sr")
    spec = DiskSpec("gpt", 24 * MiB, [PartitionSpec("ext4", 0, label="one")])
    disk = build_disk(spec, tmp_path / "small.img")
    image = save_with_ocs_sr(disk, tmp_path / "partimag", "cz-small", (compression,))
    repo = repository(tmp_path)
    snap = import_and_restore(repo, image, tmp_path / "restored.img")
    check_restored(disk, tmp_path / "restored.img", tmp_path)
    if compression == "-z0":
        # onto a smaller disk: the filesystem recorded at import lets restore shrink it
        small = tmp_path / "small.img"
        with small.open("wb") as f:
            f.truncate(16 * MiB)
        done = blockvault("-r", repo, "restore", str(snap["id"]), small, "--yes")
        assert done.returncode == 0 and "shrunk" in done.stdout + done.stderr, done.stderr
        table = json.loads(sh("sfdisk", "--json", small))["partitiontable"]
        [part] = table["partitions"]
        fsck(extract(small, part["start"] * 512, part["size"] * 512, tmp_path / "s1"), "ext4")


@pytest.fixture(scope="module")
def plain_image(tmp_path_factory: pytest.TempPathFactory, tree: Path) -> Iterator[Path]:
    """An uncompressed image split into 1 MB pieces, with MD5SUMS: damage lands where
    it is put."""
    need_tools("ocs-sr")
    work = tmp_path_factory.mktemp("cz-plain")
    spec = DiskSpec("gpt", 32 * MiB, [PartitionSpec("ext4", 0, content=tree)])
    disk = build_disk(spec, work / "plain.img")
    yield save_with_ocs_sr(disk, work / "partimag", "cz-plain", ("-z0", "-i", "1", "-gm"))


def damaged_copy(image: Path, work: Path) -> Path:
    copy = work / image.name
    copy.mkdir(parents=True)
    for f in image.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "MD5SUMS").unlink()  # so the partclone checks meet the damage first
    return copy


def refused(repo: Path, image: Path) -> str:
    done = blockvault("-r", repo, "import", image)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    listed = blockvault("-r", repo, "snapshots", "--json")
    assert json.loads(listed.stdout) == []  # nothing was committed
    return done.stderr


def test_damage_is_refused_with_its_position(plain_image: Path, tmp_path: Path) -> None:
    repo = repository(tmp_path)
    first = plain_image / "sdz1.ext4-ptcl-img.uncomp.aa"
    assert first.is_file()
    # a block's byte flipped in the second piece: its strip's checksum fails there
    copy = damaged_copy(plain_image, tmp_path / "block")
    piece = copy / "sdz1.ext4-ptcl-img.uncomp.ab"
    data = bytearray(piece.read_bytes())
    data[5000] ^= 0x10
    piece.write_bytes(bytes(data))
    message = refused(repo, copy)
    assert "CRC32 checksum is wrong at sdz1.ext4-ptcl-img.uncomp.a" in message
    # the bitmap's byte flipped: the bitmap checksum fails, at the end of the bitmap
    copy = damaged_copy(plain_image, tmp_path / "bitmap")
    piece = copy / "sdz1.ext4-ptcl-img.uncomp.aa"
    data = bytearray(piece.read_bytes())
    data[200] ^= 0x01
    piece.write_bytes(bytes(data))
    bitmap_end = 110 + -(-int.from_bytes(data[60:68], "little") // 8)
    expected = f"bitmap checksum is wrong at sdz1.ext4-ptcl-img.uncomp.aa byte {bitmap_end}"
    assert expected in refused(repo, copy)
    # the last piece cut short
    copy = damaged_copy(plain_image, tmp_path / "cut")
    last = sorted(copy.glob("sdz1.ext4-ptcl-img.uncomp.*"))[-1]
    last.write_bytes(last.read_bytes()[:1000])
    assert "the image ends early" in refused(repo, copy)
    # a piece missing
    copy = damaged_copy(plain_image, tmp_path / "missing")
    (copy / "sdz1.ext4-ptcl-img.uncomp.ab").unlink()
    assert "piece sdz1.ext4-ptcl-img.uncomp.ab is missing" in refused(repo, copy)


def test_checksum_lists_are_checked(plain_image: Path, tmp_path: Path) -> None:
    repo = repository(tmp_path)
    copy = tmp_path / "sums"
    copy.mkdir()
    for f in plain_image.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    mbr = copy / "sdz-mbr"
    data = bytearray(mbr.read_bytes())
    data[100] ^= 1
    mbr.write_bytes(bytes(data))
    assert "sdz-mbr does not match its md5 checksum" in refused(repo, copy)


@pytest.mark.parametrize(
    ("marker", "named"), [("lvm_vg_dev.list", "LVM"), ("luks-dev.list", "LUKS")]
)
def test_lvm_and_luks_are_refused_by_name(
    plain_image: Path, tmp_path: Path, marker: str, named: str
) -> None:
    repo = repository(tmp_path)
    copy = tmp_path / "inside"
    copy.mkdir()
    for f in plain_image.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / marker).write_text("/dev/sdz1 vg0\n")
    message = refused(repo, copy)
    assert named in message and "cannot import" in message


def test_rescuezilla_directory_is_named_so(plain_image: Path, tmp_path: Path) -> None:
    """Rescuezilla writes Clonezilla's layout (always split) plus its description."""
    copy = tmp_path / "rz"
    copy.mkdir()
    for f in plain_image.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "rescuezilla.description.txt").write_text("before the upgrade\n")
    repo = repository(tmp_path)
    done = blockvault("-r", repo, "import", copy, "--json")
    assert done.returncode == 0, done.stderr
    [snap] = json.loads(done.stdout)
    assert snap["source"].startswith("rescuezilla:") and snap["source_id"].startswith(
        "rescuezilla:"
    )


def test_mbr_logical_partitions(tmp_path: Path) -> None:
    """Logical partitions in an extended one: sfdisk rebuilds the EBR chain from the
    dump exactly as it was."""
    need_tools("ocs-sr")
    spec = DiskSpec(
        "mbr",
        64 * MiB,
        [
            PartitionSpec("ext4", 20 * MiB),
            PartitionSpec("ext4", 16 * MiB),
            PartitionSpec("fat32", 0),
        ],
        logical_from=1,
    )
    disk = build_disk(spec, tmp_path / "logical.img")
    assert [p.number for p in disk.partitions] == [1, 5, 6]
    image = save_with_ocs_sr(disk, tmp_path / "partimag", "cz-logical", ("-z1p",))
    repo = repository(tmp_path)
    import_and_restore(repo, image, tmp_path / "restored.img")
    check_restored(disk, tmp_path / "restored.img", tmp_path)
