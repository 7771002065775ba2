"""Browsing btrfs partitions of snapshots: what ``ls``, ``cat``, ``find``, ``extract``
and ``mount`` show must be what the kernel shows with the partition mounted.

The partition is made by ``mkfs.btrfs`` on a GPT disk and used through the kernel:
a subvolume ``@`` set as the default (so ``/`` is ``@``, as installers do), a
nested subvolume ``@/home`` with another one inside it (files compressed with zstd,
zlib and lzo, as ``compress=`` and ``btrfs property`` make them), a read-only snapshot of
``@/home`` (where the innermost subvolume shows as an empty directory), files
deleted after the snapshot. The oracle is the same partition mounted read-only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from dissect.util.hash import crc32c  # type: ignore[import-untyped]

from blockvault.browse import open_volume
from blockvault.browse.btrfs import BtrfsFilesystem
from blockvault.pipeline.backup import backup
from blockvault.repo import Repository, Snapshot
from blockvault_demo.sample import (
    TREE_KINDS,
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    make_tree,
    manifest,
)
from tests.conftest import IS_ROOT, need_tools, sh
from tests.disk.fs.fsimages import progs_chunks
from tests.fstree import extract

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount btrfs on a loop device")


@dataclass(frozen=True)
class Btrfs:
    disk: BuiltDisk
    repo: Repository
    snapshot: Snapshot
    seen: Path  # the partition as the kernel showed it, copied out


def _mount_partition(disk: BuiltDisk, where: Path, *options: str) -> None:
    part = disk.partitions[0]
    opts = ["loop", f"offset={part.offset}", f"sizelimit={part.size}", *options]
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", "-o", ",".join(opts), disk.path, where)


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Btrfs:
    need_tools("mkfs.btrfs", "btrfs", "sfdisk")
    work = tmp_path_factory.mktemp("browse-btrfs")
    make_tree(work / "top", 2 * MiB, seed=21, kinds=TREE_KINDS)
    disk = build_disk(
        DiskSpec("gpt", 300 * MiB, [PartitionSpec("btrfs", 0, "linux", work / "top")]),
        work / "disk.img",
    )
    mnt = work / "mnt"
    _mount_partition(disk, mnt, "subvolid=5", "compress=zstd")  # as Fedora mounts it
    try:
        sh("btrfs", "subvolume", "create", mnt / "@")
        make_tree(mnt / "@" / "etc", 3 * MiB, seed=22, kinds=TREE_KINDS)
        sh("btrfs", "subvolume", "create", mnt / "@" / "home")
        sh("btrfs", "subvolume", "create", mnt / "@" / "home" / "user")
        for name, compression in (("user/docs", "zlib"), ("shared", "lzo")):
            (mnt / "@" / "home" / name).mkdir()
            sh("btrfs", "property", "set", mnt / "@" / "home" / name, "compression", compression)
        make_tree(mnt / "@" / "home" / "user" / "docs", 3 * MiB, seed=23, kinds=TREE_KINDS)
        make_tree(mnt / "@" / "home" / "shared", 2 * MiB, seed=24, kinds=TREE_KINDS)
        (mnt / "@" / "snaps").mkdir()
        sh("btrfs", "subvolume", "snapshot", "-r", mnt / "@" / "home", mnt / "@/snaps/home-1")
        for path in sorted(p for p in (mnt / "@/home/shared").rglob("*") if p.is_file())[::3]:
            path.unlink()
        subvolid = sh("btrfs", "inspect-internal", "rootid", mnt / "@").strip()
        sh("btrfs", "subvolume", "set-default", subvolid, mnt)
    finally:
        sh("umount", mnt)
    seen = work / "seen"
    _mount_partition(disk, mnt, "ro")
    try:
        shutil.copytree(mnt, seen, symlinks=True)
        listing = {rel: _stat(mnt / rel) for rel in manifest(mnt)}
    finally:
        sh("umount", mnt)
    (work / "seen.json").write_text(json.dumps(listing))
    repo = Repository.init(str(work / "repo"), chunk_size=256 * 1024)
    return Btrfs(disk, repo, backup(repo, str(disk.path)), seen)


def _stat(path: Path) -> list[object]:
    st = path.lstat()
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    size = 0 if kind == "dir" else st.st_size
    mtime = None if kind == "dir" else st.st_mtime_ns  # the kernel's stub subvolume dirs
    return [kind, size, st.st_mode, st.st_uid, mtime]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["blockvault", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_partition_is_recorded_as_btrfs_with_every_compression(
    backed: Btrfs, tmp_path: Path
) -> None:
    assert [p.filesystem for p in backed.snapshot.partitions] == ["btrfs"]
    part = backed.disk.partitions[0]
    copy = extract(backed.disk.path, part.offset, part.size, tmp_path / "p1.img")
    dump = sh("btrfs", "inspect-internal", "dump-tree", copy)
    assert set(re.findall(r"compression (\d)", dump)) >= {"1", "2", "3"}  # zlib, lzo, zstd


def test_ls_shows_what_the_kernel_shows(backed: Btrfs) -> None:
    proc = cli("-r", backed.repo.location, "ls", "-R", "--json", f"{backed.snapshot.id}:1/")
    got = {}
    for item in json.loads(proc.stdout)["entries"]:
        kind, size = item["kind"], item["size"]
        mtime = None if kind == "dir" else item["mtime_ns"]
        got[item["path"]] = [kind, 0 if kind == "dir" else size, mtime]
    seen = json.loads((backed.seen.parent / "seen.json").read_text())
    assert got == {rel: [k, size, mtime] for rel, (k, size, _m, _u, mtime) in seen.items()}
    assert "home/user/docs" in got and "snaps/home-1/shared" in got
    assert "snaps/home-1/user" in got and not any(p.startswith("snaps/home-1/user/") for p in got)


def test_modes_and_owners_are_the_kernels(backed: Btrfs) -> None:
    volume = open_volume(backed.repo, backed.snapshot, 1)
    seen = json.loads((backed.seen.parent / "seen.json").read_text())
    for entry in volume.walk("/"):
        rel = entry.path.lstrip("/")
        if rel:
            _kind, _size, mode, uid, _mtime = seen[rel]
            assert (entry.mode, entry.uid) == (mode, uid), rel


def test_extract_gives_the_kernels_tree(backed: Btrfs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli("-r", backed.repo.location, "extract", f"{backed.snapshot.id[:10]}:1/", out)
    assert manifest(out) == manifest(backed.seen)


def test_cat_reads_a_file_in_a_nested_subvolume_and_in_the_snapshot(backed: Btrfs) -> None:
    for rel in ("home/user/docs", "snaps/home-1/shared"):
        files = (p for p in sorted((backed.seen / rel).rglob("*")) if not p.is_symlink())
        first = next(p for p in files if p.is_file() and p.stat().st_size > 1000)
        address = f"latest:1/{first.relative_to(backed.seen).as_posix()}"
        proc = subprocess.run(
            ["blockvault", "-r", backed.repo.location, "cat", address], capture_output=True
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == first.read_bytes()


def test_find_searches_every_subvolume(backed: Btrfs) -> None:
    proc = cli("-r", backed.repo.location, "find", "--json", "*.txt")
    found = {m["path"] for m in json.loads(proc.stdout)}
    expected = {
        "/" + rel
        for rel, kind in manifest(backed.seen).items()
        if rel.endswith(".txt") and kind.startswith("file")
    }
    assert expected and found == expected


@pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fuse3 is not installed")
def test_mount_serves_the_kernels_tree(backed: Btrfs, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = cli("-r", backed.repo.location, "mount", "--json", "--filesystems", "latest", mnt)
    try:
        state = json.loads(proc.stdout)
        assert [i["how"] for i in state["inner"]] == ["blockvault"]
        assert manifest(mnt / "p1") == manifest(backed.seen)
    finally:
        done = subprocess.run(["blockvault", "umount", str(mnt)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not os.listdir(mnt)


def test_a_tree_node_pointing_at_itself_is_refused_not_walked_forever(tmp_path: Path) -> None:
    """The fs tree's root leaf rewritten as a level-1 node whose one child is itself
    (checksum recomputed): dissect's own cursor would descend forever."""
    need_tools("mkfs.btrfs", "btrfs")
    make_tree(tmp_path / "src", MiB, seed=25, kinds=TREE_KINDS)
    image = tmp_path / "fs.img"
    with image.open("wb") as f:
        f.truncate(128 * MiB)
    sh("mkfs.btrfs", "-q", "-f", "-m", "single", "--rootdir", tmp_path / "src", image)
    dump = sh("btrfs", "inspect-internal", "dump-tree", "-t", "fs", image)
    found = re.search(r"^leaf (\d+) ", dump, re.M)
    assert found, dump
    logical = int(found[1])
    physical = next(c.stripes[0] + logical - c.logical for c in progs_chunks(image)
                    if c.logical <= logical < c.logical + c.length)  # fmt: skip
    data = bytearray(image.read_bytes())
    struct.pack_into("<I", data, physical + 96, 1)  # nritems
    data[physical + 100] = 1  # level
    struct.pack_into("<QBQQQ", data, physical + 101, 256, 1, 0, logical, 1)  # key_ptr -> itself
    struct.pack_into(
        "<I", data, physical, crc32c.crc32c(bytes(data[physical + 32 : physical + 16384]))
    )
    image.write_bytes(bytes(data))
    with image.open("rb") as f, pytest.raises(Exception, match="level 1 below 1"):
        BtrfsFilesystem(f).listdir("/")
