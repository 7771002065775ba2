"""Sample disks, checked with tools other than the ones that built them.

Expected layouts are written out here from the specification (sizes in MiB, type
GUIDs from the UEFI spec), never taken from ``BuiltDisk``; the filesystems are checked
with fsck tools, blkid, debugfs and ntfscat, their contents against ``manifest`` of
trees regenerated from the same seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.errors import UsageError
from blockvault_demo.sample import (
    TREE_KINDS,
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    change_tree,
    demo_disk,
    demo_trees,
    make_tree,
    manifest,
)

MiB = 1024 * 1024
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SWAP_GUID = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
MSDATA_GUID = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
IS_ROOT = os.geteuid() == 0


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(str(args[0]), path=SBIN_PATH) or str(args[0])
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(
        [tool, *map(str, args[1:])], check=check, capture_output=True, text=True, env=env
    )


def sfdisk_json(path: Path) -> dict[str, object]:
    table = json.loads(run("sfdisk", "--json", path).stdout)["partitiontable"]
    assert isinstance(table, dict)
    return table


def extract(image: Path, offset: int, size: int, dest: Path) -> Path:
    run(
        "dd", f"if={image}", f"of={dest}", "bs=1M", "iflag=skip_bytes,count_bytes",
        f"skip={offset}", f"count={size}", "conv=sparse", "status=none",
    )  # fmt: skip
    return dest


def blkid(path: Path) -> dict[str, str]:
    out = run("blkid", "-p", "-o", "export", path, check=False).stdout  # 2: nothing found
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def without_symlinks(tree: dict[str, str]) -> dict[str, str]:
    return {path: what for path, what in tree.items() if not what.startswith("symlink:")}


def ext_contents(fs_image: Path, out: Path) -> dict[str, str]:
    out.mkdir()
    run("debugfs", "-R", f"rdump / {out}", fs_image)
    dumped = manifest(out)
    return {p: w for p, w in dumped.items() if p.split("/")[0] != "lost+found"}


def fat_contents(fs_image: Path, out: Path) -> dict[str, str]:
    out.mkdir()
    if run("mdir", "-b", "-i", fs_image, "::/", check=False).stdout.strip():
        run("mcopy", "-s", "-n", "-i", fs_image, "::/*", out)
    return manifest(out)


def ntfs_contents(fs_image: Path) -> dict[str, str]:
    """Path -> ``dir`` or ``file:<sha256>`` read with ntfsls and ntfscat (libntfs-3g,
    no FUSE)."""
    listing = run("ntfsls", "-R", "-F", fs_image).stdout
    entries: dict[str, str] = {}
    directory = ""
    for line in listing.splitlines():
        if line.startswith("/") and line.endswith(":"):
            directory = line[:-1].strip("/")
        elif line and line.rstrip("/") not in (".", ".."):
            path = f"{directory}/{line}".lstrip("/")
            entries[path.rstrip("/")] = "dir" if line.endswith("/") else "file"
    for path, kind in entries.items():
        if kind == "file":
            data = subprocess.run(
                [shutil.which("ntfscat", path=SBIN_PATH) or "ntfscat", fs_image, path],
                check=True,
                capture_output=True,
            ).stdout
            entries[path] = f"file:{hashlib.sha256(data).hexdigest()}"
    return entries


# --------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltDisk, dict[str, dict[str, str]]]:
    base = tmp_path_factory.mktemp("demo")
    disk = demo_disk(base / "demo.img")
    trees = demo_trees(base / "expected")
    return disk, {label: manifest(path) for label, path in trees.items()}


def test_demo_partition_table(demo: tuple[BuiltDisk, dict[str, dict[str, str]]]) -> None:
    disk, _ = demo
    table = sfdisk_json(disk.path)
    assert table["label"] == "gpt"
    assert table["sectorsize"] == 512
    parts = table["partitions"]
    assert isinstance(parts, list)
    assert [p["type"] for p in parts] == [ESP_GUID, LINUX_GUID, SWAP_GUID, MSDATA_GUID]
    assert [p["name"] for p in parts] == ["ESP", "root", "swap", "Data"]
    assert [p["size"] * 512 for p in parts] == [40 * MiB, 120 * MiB, 16 * MiB, 60 * MiB]
    # 1 MiB aligned, back to back, from 1 MiB on.
    assert [p["start"] for p in parts] == [2048, 2048 + 81920, 2048 + 327680, 2048 + 360448]
    assert [(p.offset, p.size) for p in disk.partitions] == [
        (p["start"] * 512, p["size"] * 512) for p in parts
    ]
    assert [p.number for p in disk.partitions] == [1, 2, 3, 4]
    assert os.path.getsize(disk.path) == 256 * MiB
    # Sparse: far fewer bytes allocated than the image size.
    assert os.stat(disk.path).st_blocks * 512 < 160 * MiB


def test_demo_ext4_root(demo: tuple[BuiltDisk, dict[str, dict[str, str]]], tmp_path: Path) -> None:
    disk, expected = demo
    part = disk.by_label("root")
    fs = extract(disk.path, part.offset, part.size, tmp_path / "root.img")
    run("e2fsck", "-fn", fs)
    assert blkid(fs)["TYPE"] == "ext4"
    assert blkid(fs)["LABEL"] == "root"
    assert part.content == "tree"
    contents = ext_contents(fs, tmp_path / "dump")
    assert contents == expected["root"]
    assert any(what.startswith("symlink:") for what in contents.values())
    assert any(not path.isascii() for path in contents)


def test_demo_esp(demo: tuple[BuiltDisk, dict[str, dict[str, str]]], tmp_path: Path) -> None:
    disk, expected = demo
    part = disk.by_label("ESP")
    fs = extract(disk.path, part.offset, part.size, tmp_path / "esp.img")
    run("fsck.vfat", "-n", fs)
    info = blkid(fs)
    assert (info["TYPE"], info["LABEL"], info["VERSION"]) == ("vfat", "ESP", "FAT32")
    contents = fat_contents(fs, tmp_path / "out")
    assert contents == without_symlinks(expected["ESP"])
    assert "EFI/BOOT/BOOTX64.EFI" in contents


def test_demo_ntfs(demo: tuple[BuiltDisk, dict[str, dict[str, str]]], tmp_path: Path) -> None:
    disk, expected = demo
    part = disk.by_label("Data")
    fs = extract(disk.path, part.offset, part.size, tmp_path / "data.img")
    run("ntfsfix", "-n", fs)
    assert (blkid(fs)["TYPE"], blkid(fs)["LABEL"]) == ("ntfs", "Data")
    contents = ntfs_contents(fs)
    if part.content == "tree":
        assert contents == expected["Data"]
    else:
        assert part.content == "flat"
        flat = {
            path.replace("/", "_"): what
            for path, what in expected["Data"].items()
            if what.startswith("file:")
        }
        assert contents == flat


def test_demo_swap(demo: tuple[BuiltDisk, dict[str, dict[str, str]]], tmp_path: Path) -> None:
    disk, _ = demo
    part = disk.by_label("swap")
    fs = extract(disk.path, part.offset, part.size, tmp_path / "swap.img")
    assert (blkid(fs)["TYPE"], blkid(fs)["LABEL"]) == ("swap", "swap")


# --------------------------------------------------------------------------- other layouts


def test_mbr_primary_and_logicals(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 2 * MiB, seed=7)  # with symlinks, one of them dangling: FAT skips them
    spec = DiskSpec(
        "mbr",
        96 * MiB,
        [
            PartitionSpec("ext4", 32 * MiB, "prim", tree),
            PartitionSpec("fat16", 24 * MiB, "LOGFAT", tree),
            PartitionSpec("swap", 16 * MiB, "lswap"),
        ],
        logical_from=1,
    )
    disk = build_disk(spec, tmp_path / "mbr.img")
    table = sfdisk_json(disk.path)
    assert table["label"] == "dos"
    parts = table["partitions"]
    assert isinstance(parts, list)
    assert [(p["node"][-1], p["type"]) for p in parts] == [
        ("1", "83"), ("2", "5"), ("5", "e"), ("6", "82"),
    ]  # fmt: skip
    extended, logicals = parts[1], parts[2:]
    assert disk.extended == (extended["start"] * 512, extended["size"] * 512)
    ext_end = extended["start"] + extended["size"]
    assert all(extended["start"] < p["start"] < ext_end for p in logicals)
    assert [(p.number, p.offset, p.size) for p in disk.partitions] == [
        (int(p["node"][-1]), p["start"] * 512, p["size"] * 512) for p in (parts[0], *logicals)
    ]
    assert [p["size"] * 512 for p in (parts[0], *logicals)] == [32 * MiB, 24 * MiB, 16 * MiB]

    ext = extract(disk.path, disk.partitions[0].offset, 32 * MiB, tmp_path / "p1.img")
    run("e2fsck", "-fn", ext)
    assert ext_contents(ext, tmp_path / "ext") == manifest(tree)
    fat = extract(disk.path, disk.partitions[1].offset, 24 * MiB, tmp_path / "p5.img")
    run("fsck.vfat", "-n", fat)
    assert blkid(fat)["VERSION"] == "FAT16"
    assert disk.partitions[1].content == "no-symlinks"
    assert fat_contents(fat, tmp_path / "fat") == without_symlinks(manifest(tree))
    swap = extract(disk.path, disk.partitions[2].offset, 16 * MiB, tmp_path / "p6.img")
    assert blkid(swap)["TYPE"] == "swap"


def test_whole_disk_filesystem(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 1 * MiB, seed=2)
    disk = build_disk(
        DiskSpec("none", 32 * MiB, [PartitionSpec("ext4", 0, "whole", tree)]),
        tmp_path / "none.img",
    )
    assert [(p.number, p.offset, p.size) for p in disk.partitions] == [(0, 0, 32 * MiB)]
    info = blkid(disk.path)
    assert (info["TYPE"], info["LABEL"]) == ("ext4", "whole")
    assert "PTTYPE" not in info
    assert run("sfdisk", "--json", disk.path, check=False).returncode != 0
    run("e2fsck", "-fn", disk.path)
    assert ext_contents(disk.path, tmp_path / "dump") == manifest(tree)


def test_ntfs_without_fuse_is_flat(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 1 * MiB, seed=3, kinds=TREE_KINDS - {"symlink"})
    spec = DiskSpec("gpt", 32 * MiB, [PartitionSpec("ntfs", 24 * MiB, "flat", tree)])
    disk = build_disk(spec, tmp_path / "ntfs.img", ntfs_mount=False)
    part = disk.partitions[0]
    assert part.content == "flat"
    fs = extract(disk.path, part.offset, part.size, tmp_path / "fs.img")
    run("ntfsfix", "-n", fs)
    expected = {
        path.replace("/", "_"): what
        for path, what in manifest(tree).items()
        if what.startswith("file:")
    }
    assert ntfs_contents(fs) == expected


def test_raw_and_empty_partitions(tmp_path: Path) -> None:
    spec = DiskSpec(
        "gpt", 16 * MiB, [PartitionSpec("raw", 4 * MiB), PartitionSpec("empty", 4 * MiB)]
    )
    first = build_disk(spec, tmp_path / "a.img")
    second = build_disk(spec, tmp_path / "b.img")
    raw, empty = first.partitions
    with open(first.path, "rb") as f:
        f.seek(raw.offset)
        raw_bytes = f.read(raw.size)
        f.seek(empty.offset)
        assert f.read(empty.size) == bytes(empty.size)
    assert raw_bytes.count(0) < raw.size // 100  # not zeros, not a filesystem
    with open(second.path, "rb") as f:
        f.seek(raw.offset)
        assert f.read(raw.size) == raw_bytes  # seeded
    assert "TYPE" not in blkid(extract(first.path, raw.offset, raw.size, tmp_path / "r.img"))


def _sfdisk_has_sector_size() -> bool:
    return "--sector-size" in run("sfdisk", "--help").stdout


@pytest.mark.root
@pytest.mark.skipif(
    not IS_ROOT and not _sfdisk_has_sector_size(),
    reason="4096-byte sectors need root (loop device) or sfdisk >= 2.40",
)
def test_4096_byte_sectors(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 1 * MiB, seed=4, kinds=TREE_KINDS - {"symlink"})
    spec = DiskSpec(
        "gpt",
        64 * MiB,
        [PartitionSpec("fat16", 32 * MiB, "FAT4K", tree), PartitionSpec("ext4", 0, "e4k", tree)],
        sector_size=4096,
    )
    disk = build_disk(spec, tmp_path / "4k.img")
    if _sfdisk_has_sector_size():
        out = run("sfdisk", "--sector-size", "4096", "--json", disk.path).stdout
    else:
        device = run("losetup", "--find", "--show", "--sector-size", "4096", disk.path)
        try:
            out = run("sfdisk", "--json", device.stdout.strip()).stdout
        finally:
            run("losetup", "--detach", device.stdout.strip())
    table = json.loads(out)["partitiontable"]
    assert table["sectorsize"] == 4096
    starts = [p["start"] for p in table["partitions"]]
    assert starts == [256, 256 + 8192]  # 1 MiB, then 1 MiB + 32 MiB, in 4 KiB sectors
    assert [p.offset for p in disk.partitions] == [1 * MiB, 33 * MiB]
    fat = extract(disk.path, 1 * MiB, 32 * MiB, tmp_path / "fat.img")
    run("fsck.vfat", "-n", fat)
    assert fat_contents(fat, tmp_path / "out") == manifest(tree)
    ext = extract(disk.path, disk.partitions[1].offset, disk.partitions[1].size, tmp_path / "e")
    run("e2fsck", "-fn", ext)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT or shutil.which("runuser") is None, reason="needs root")
def test_builds_as_unprivileged_user(request: pytest.FixtureRequest) -> None:
    # The user's own machine: no root, /usr/sbin not on PATH, system Python.
    python = shutil.which("python3", path="/usr/bin:/bin")
    version = "import sys; print(sys.version_info >= (3, 11))"
    if python is None or run(python, "-c", version).stdout.strip() != "True":
        pytest.skip("no system python3 >= 3.11")
    src = Path(__file__).resolve().parents[1] / "src"
    sample = src / "blockvault_demo" / "sample.py"  # was blockvault/sample.py: always skipped
    readable = ["runuser", "-u", "nobody", "--", "test", "-r", str(sample)]
    if subprocess.run(readable, check=False).returncode:
        pytest.skip(f"{src} is not readable by nobody")
    # pytest's own temporary directories are private to root.
    work = Path(tempfile.mkdtemp(prefix="blockvault-nobody-"))
    request.addfinalizer(lambda: shutil.rmtree(work))
    shutil.chown(work, "nobody")
    script = (
        "from pathlib import Path\n"
        "from blockvault_demo.sample import *\n"
        f"w = Path({str(work)!r})\n"
        "make_tree(w / 't', 1 << 20, kinds=TREE_KINDS - {'symlink'})\n"
        "spec = DiskSpec('mbr', 96 << 20, [PartitionSpec('ext4', 32 << 20, 'r', w / 't'),\n"
        "    PartitionSpec('fat32', 36 << 20, 'E', w / 't'),\n"
        "    PartitionSpec('ntfs', 0, 'D', w / 't')])\n"
        "disk = build_disk(spec, w / 'd.img')\n"
        "print(' '.join(p.content for p in disk.partitions))\n"
    )
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", "-i", "PATH=/usr/bin:/bin",
         f"PYTHONPATH={src}", python, "-c", script],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    modes = done.stdout.split()
    assert modes[:2] == ["tree", "no-symlinks"]
    assert modes[2] in ("tree", "flat")  # flat unless ntfs-3g may mount (setuid)
    assert (work / "d.img").stat().st_uid == pwd.getpwnam("nobody").pw_uid


# --------------------------------------------------------------------------- errors


def test_missing_tool_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("blockvault_demo.sample._SBIN", ())
    with pytest.raises(UsageError, match=r"^sfdisk not found: apt-get install fdisk$"):
        build_disk(DiskSpec("gpt", 8 * MiB, [PartitionSpec("empty", 1 * MiB)]), tmp_path / "x")
    with pytest.raises(UsageError, match=r"^mkntfs not found: apt-get install ntfs-3g$"):
        build_disk(DiskSpec("none", 8 * MiB, [PartitionSpec("ntfs", 0)]), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_tool_failure_is_one_line(tmp_path: Path) -> None:
    spec = DiskSpec("none", 8 * MiB, [PartitionSpec("fat16", 0, "LONGER-THAN-11")])
    with pytest.raises(UsageError, match=r"^mkfs\.vfat failed: [^\n]*11 characters$"):
        build_disk(spec, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PartitionSpec("zfs", MiB), "unknown filesystem"),
        (lambda: PartitionSpec("swap", MiB, content=Path("/")), "no content"),
        (lambda: DiskSpec("mbr", 64 * MiB, [PartitionSpec("ext4", MiB)] * 5), "4 primary"),
        (lambda: DiskSpec("gpt", 64 * MiB, [PartitionSpec("ext4", 1000)]), "multiple of 512"),
        (lambda: DiskSpec("none", 64 * MiB, [PartitionSpec("ext4", MiB)]), "disk size"),
        (lambda: DiskSpec("gpt", 64 * MiB, [], logical_from=0), "MBR disks only"),
    ],
)
def test_invalid_specs(make: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make()


# --------------------------------------------------------------------------- trees


def test_make_tree_is_deterministic(tmp_path: Path) -> None:
    first = make_tree(tmp_path / "a", 4 * MiB, seed=11)
    make_tree(tmp_path / "b", 4 * MiB, seed=11)
    make_tree(tmp_path / "c", 4 * MiB, seed=12)
    tree_a, tree_b = manifest(tmp_path / "a"), manifest(tmp_path / "b")
    assert tree_a == tree_b
    assert tree_a != manifest(tmp_path / "c")
    for path in tree_a:
        mtime_a = os.lstat(tmp_path / "a" / path).st_mtime
        assert mtime_a == os.lstat(tmp_path / "b" / path).st_mtime

    assert 0.9 * 4 * MiB <= first.bytes <= 1.1 * 4 * MiB
    sizes = {p: os.lstat(tmp_path / "a" / p).st_size for p, w in tree_a.items() if "file:" in w}
    assert max(sizes.values()) >= 512 * 1024  # the larger file
    assert min(sizes.values()) == 0  # empty files
    assert any(not p.isascii() for p in tree_a)
    assert any(p.count("/") >= 6 for p in tree_a)  # nested directories
    assert first.symlinks == 3
    assert any(
        w == "dir" and not any(q.startswith(p + "/") for q in tree_a) for p, w in tree_a.items()
    )
    # Real system files: some executables with an ELF header.
    heads = [(tmp_path / "a" / p).read_bytes()[:4] for p in tree_a if p.startswith("usr/bin/")]
    assert b"\x7fELF" in heads


def test_make_tree_kinds_and_refusals(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "t", 1 * MiB, kinds=TREE_KINDS - {"symlink"})
    assert summary.symlinks == 0
    with pytest.raises(UsageError, match="not empty"):
        make_tree(tmp_path / "t", 1 * MiB)
    with pytest.raises(UsageError, match="unknown tree kinds"):
        make_tree(tmp_path / "u", 1 * MiB, kinds={"videos"})


def test_change_tree(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "orig", 4 * MiB, seed=5)
    original = manifest(tmp_path / "orig")
    for name in ("a", "b"):
        shutil.copytree(tmp_path / "orig", tmp_path / name, symlinks=True)
    change_a = change_tree(tmp_path / "a", 0.2, seed=1)
    change_b = change_tree(tmp_path / "b", 0.2, seed=1)
    assert change_a == change_b
    assert manifest(tmp_path / "a") == manifest(tmp_path / "b")
    assert manifest(tmp_path / "a") != original
    assert 0.18 * summary.bytes <= change_a.total <= 0.2 * summary.bytes
    assert change_a.rewritten > 0 and change_a.added > 0
    unchanged = set(original.items()) & set(manifest(tmp_path / "a").items())
    assert len(unchanged) > len(original) // 2  # most files untouched
