"""ls, cat, extract and find read filesystems straight from the repository, no root.

Oracles: the source trees the disks were built from (os.lstat and file bytes),
debugfs for the fragmentation of the fragmented file, and the CLI's exit codes.
FAT keeps times in 2-second steps and no modes; NTFS keeps 100 ns times; ext4
keeps everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from blockvault.browse import extract, find, open_volume
from blockvault_demo.sample import manifest
from tests.browse.conftest import NTFS_MOUNTS, Backed
from tests.conftest import IS_ROOT

MiB = 1024 * 1024
FAMILY = {1: "fat", 2: "ext", 3: "ntfs"}


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["blockvault", *map(str, args)], capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr.decode())
    return proc


def source_listing(root: Path, fs: str) -> dict[str, tuple[object, ...]]:
    """path -> (kind, size, mtime, mode, target) as the source tree has them, at the
    precision the filesystem keeps."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(dirpath, name)
            st = full.lstat()
            rel = "/" + full.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                kind, target = "symlink", os.readlink(full)
            else:
                kind, target = ("dir" if stat.S_ISDIR(st.st_mode) else "file"), None
            size = 0 if kind == "dir" else len(os.fsencode(target)) if target else st.st_size
            mtime = st.st_mtime_ns
            if fs == "fat":
                mtime = mtime // 2_000_000_000 * 2  # 2-second steps, in seconds
            mode = st.st_mode if fs == "ext" else None
            if fs != "ext" and kind == "dir":
                mtime = None  # directory times change as entries are added through the fs
            found[rel] = (kind, size, mtime, mode, target)
    return found


def snapshot_listing(backed: Backed, number: int) -> dict[str, tuple[object, ...]]:
    proc = cli("-r", backed.repo.location, "ls", "-R", "--json", f"{backed.snapshot.id}:{number}/")
    data = json.loads(proc.stdout)
    fs = FAMILY[number]
    found: dict[str, tuple[object, ...]] = {}
    volume = open_volume(backed.repo, backed.snapshot, number)
    modes = {e.path: e.mode for e in volume.walk("/")}
    for item in data["entries"]:
        path = "/" + item["path"]
        if path == "/lost+found":
            continue
        mtime: int | None = item["mtime_ns"]
        if fs == "fat":
            mtime = item["mtime_ns"] // 1_000_000_000
        if fs != "ext" and item["kind"] == "dir":
            mtime = None
        mode = modes[path] if fs == "ext" else None
        found[path] = (item["kind"], item["size"], mtime, mode, item["target"])
    return found


@pytest.mark.parametrize("number", [1, 2, 3], ids=["fat32", "ext4", "ntfs"])
def test_ls_recursive_equals_the_source_tree(multi: Backed, number: int) -> None:
    if FAMILY[number] == "ntfs" and not NTFS_MOUNTS:
        pytest.skip("NTFS trees with directories need ntfs-3g mounts (root, FUSE)")
    assert snapshot_listing(multi, number) == source_listing(multi.trees[number], FAMILY[number])


@pytest.mark.parametrize("number", [1, 2, 3], ids=["fat32", "ext4", "ntfs"])
def test_extract_whole_partition_gives_the_source_tree(
    multi: Backed, number: int, tmp_path: Path
) -> None:
    if FAMILY[number] == "ntfs" and not NTFS_MOUNTS:
        pytest.skip("NTFS trees with directories need ntfs-3g mounts (root, FUSE)")
    out = tmp_path / "out"
    cli("-r", multi.repo.location, "extract", f"{multi.snapshot.id[:10]}:{number}/", out)
    got = manifest(out)
    got = {k: v for k, v in got.items() if not k.startswith("lost+found")}
    assert got == manifest(multi.trees[number])
    if FAMILY[number] == "ext":  # modes and times as in the source (owners too as root)
        for rel in ("home/user/Documents/café-crème.txt", "etc/localtime", "home"):
            src, dst = (multi.trees[number] / rel).lstat(), (out / rel).lstat()
            assert (src.st_mode, src.st_mtime_ns) == (dst.st_mode, dst.st_mtime_ns), rel
            if IS_ROOT:
                assert (src.st_uid, src.st_gid) == (dst.st_uid, dst.st_gid)


def test_cat_of_non_ascii_names_in_every_filesystem(multi: Backed) -> None:
    for number in (1, 2):
        rel = "home/user/Documents/日本/メモ.txt"
        proc = cli("-r", multi.repo.location, "cat", f"latest:{number}/{rel}")
        assert proc.stdout == (multi.trees[number] / rel).read_bytes()


def test_one_small_file_fetches_a_handful_of_chunks(multi: Backed) -> None:
    index = multi.repo.load_index(multi.snapshot)
    total = sum(1 for r in index.regions for c in r.chunk_ids if any(c))
    rel = "/home/user/Documents/café-crème.txt"
    for number in (1, 2, 3):
        if number == 3 and multi.disk.partitions[2].content != "tree":
            continue
        volume = open_volume(multi.repo, multi.snapshot, number, index)
        data = volume.open(rel).read()
        assert data == (multi.trees[number] / rel.lstrip("/")).read_bytes()
        assert volume.fetched <= 10, (number, volume.fetched)
    assert total > 250  # 64 KiB chunks: the disk is hundreds of them


def test_large_sparse_and_fragmented_files(special: Backed, tmp_path: Path) -> None:
    tree = special.trees[1]
    extents = subprocess.run(
        ["debugfs", "-R", "ex /fragmented.bin", str(special.disk.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len([line for line in extents.splitlines() if "-" in line]) > 10  # really fragmented
    repo = special.repo.location
    for rel in ("big/large.bin", "sparse.img", "fragmented.bin", "small.txt"):
        expected = hashlib.sha256((tree / rel).read_bytes()).hexdigest()
        # no partition in the address: the disk has no table, partition 1 is meant
        out = cli("-r", repo, "cat", f"latest/{rel}").stdout
        assert hashlib.sha256(out).hexdigest() == expected, rel
        cli("-r", repo, "extract", f"latest:1/{rel}", tmp_path / Path(rel).name)
        copy = tmp_path / Path(rel).name
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == expected, rel
    sparse = (tmp_path / "sparse.img").stat()
    assert sparse.st_blocks * 512 < 2 * MiB  # holes stayed holes: 600 KB of data in 40 MiB
    # mke2fs -d keeps whole seconds; debugfs says what the inode holds
    inode = subprocess.run(
        ["debugfs", "-R", "stat /small.txt", str(special.disk.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seconds, extra = re.search(r"mtime: 0x([0-9a-f]+):([0-9a-f]+)", inode).groups()  # type: ignore[union-attr]
    expected_ns = int(seconds, 16) * 1_000_000_000 + (int(extra, 16) >> 2)
    assert (tmp_path / "small.txt").stat().st_mtime_ns == expected_ns


def test_extract_refuses_to_overwrite_without_yes(special: Backed, tmp_path: Path) -> None:
    target = tmp_path / "small.txt"
    target.write_text("mine")
    proc = cli("-r", special.repo.location, "extract", "latest:1/small.txt", target, check=False)
    assert proc.returncode == 2
    assert proc.stderr.decode().count("\n") == 1 and b"--yes" in proc.stderr
    assert target.read_text() == "mine"
    cli("-r", special.repo.location, "extract", "--yes", "latest:1/small.txt", target)
    assert target.read_text() == "one small file\n"
    # an existing directory receives the copy under its own name
    cli("-r", special.repo.location, "extract", "latest:1/big", tmp_path)
    assert (tmp_path / "big" / "large.bin").stat().st_size == 24 * MiB


def test_find_lists_matches_newest_first(multi: Backed, special: Backed) -> None:
    matches = list(find(multi.repo, "*.txt", partition=2))
    paths = {m.path for m in matches}
    expected = {
        "/" + p
        for p, kind in manifest(multi.trees[2]).items()
        if p.endswith(".txt") and kind.startswith("file")
    }
    assert paths == expected
    proc = cli("-r", multi.repo.location, "find", "--json", "café-*")
    found = json.loads(proc.stdout)
    assert {(m["partition"], m["path"]) for m in found} >= {
        (1, "/home/user/Documents/café-crème.txt"),
        (2, "/home/user/Documents/café-crème.txt"),
    }
    assert all(m["size"] == 3000 for m in found)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("nosuchsnap:1/", "no snapshot matches"),
        ("latest:7/", "no imaged partition 7"),
        ("latest:2/no/such/file", "/no does not exist"),
        ("latest:2/home/user/Documents/café-crème.txt/x", "is not a directory"),
        ("latest:x/", "is not SNAPSHOT"),
    ],
)
def test_errors_are_one_line_and_an_exit_code(multi: Backed, address: str, words: str) -> None:
    proc = cli("-r", multi.repo.location, "ls", address, check=False)
    assert proc.returncode in (2, 3)
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_unsupported_filesystem_and_missing_partition_in_cat(tmp_path: Path) -> None:
    from blockvault.pipeline.backup import backup
    from blockvault.repo import Repository
    from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk

    disk = build_disk(
        DiskSpec("mbr", 24 * MiB, [PartitionSpec("swap", 8 * MiB), PartitionSpec("raw", 0)]),
        tmp_path / "d.img",
    )
    repo = Repository.init(str(tmp_path / "repo"))
    backup(repo, str(disk.path))
    for address in ("latest:1/", "latest:2/x"):
        proc = cli("-r", repo.location, "cat", address, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and err.count("\n") == 1 and "cannot be browsed" in err
    proc = cli("-r", repo.location, "cat", "latest/x", check=False)
    assert proc.returncode == 2 and b"names no partition" in proc.stderr


def test_extract_a_symlink_and_a_directory_keeps_links(multi: Backed, tmp_path: Path) -> None:
    volume = open_volume(multi.repo, multi.snapshot, 2)
    result = extract(volume, "/home/user", tmp_path / "user")
    assert result.symlinks >= 1 and result.files > 10
    assert os.readlink(tmp_path / "user" / "docs") == "Documents"
    # a symlink inside a path is followed like the kernel does
    data = volume.open("/home/user/docs/café-crème.txt").read()
    assert data == (multi.trees[2] / "home/user/Documents/café-crème.txt").read_bytes()
