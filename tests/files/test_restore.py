"""File restore end to end: a real tree -> a file snapshot -> ``blockvault restore``.

The snapshots are made by ``tests/files/snapshots.py`` (an independent small backup
through the writer session); the oracles are ``os.lstat``, the xattr syscalls,
``getfacl`` and the bytes on disk, never blockvault's own readers. A ``victim``
directory beside each target must stay empty.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.repo.repository import Repository
from tests.conftest import blockvault, kill_when_stopped, needs_root, sh
from tests.files.snapshots import hand_built, snapshot_of

MiB = 1 << 20
# an effective+permitted CAP_NET_RAW file capability (VFS_CAP_REVISION_2), 20 bytes
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")


def state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything restore promises to keep, per path below ``root``: type and mode,
    owner, size, ns mtime, content, symlink target, device number, xattrs."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        content = b""
        if stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
        xattrs = sorted(
            (k, os.getxattr(path, k, follow_symlinks=False))
            for k in os.listxattr(path, follow_symlinks=False)
        )
        out[rel] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
            st.st_mtime_ns if rel != "." else 0,
            content,
            os.readlink(path) if stat.S_ISLNK(st.st_mode) else "",
            st.st_rdev,
            xattrs,
        )
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(str(tmp_path / "repo"))


def restore(repo: Repository, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return blockvault("-r", repo.location, "restore", *args)


def small_tree(root: Path) -> Path:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "docs" / "a.txt").write_bytes(b"alpha\n")
    (root / "docs" / "deep" / "b.bin").write_bytes(os.urandom(3 * MiB + 17))
    (root / "top.txt").write_bytes(b"top\n")
    (root / "link").symlink_to("docs/a.txt")
    (root / "abs").symlink_to("/etc/passwd")
    os.utime(root / "docs" / "a.txt", ns=(1_000_000_123, 1_600_000_000_123_456_789))
    return root


def test_a_tree_comes_back_whole_and_a_path_of_it_alone(repo: Repository, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    snap = snapshot_of(repo, src)
    out = restore(repo, snap.id[:12] + ":" + str(src), tmp_path / "t", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["files"] == 3 and result["symlinks"] == 2 and result["directories"] == 3
    assert state(tmp_path / "t") == state(src) | {".": state(tmp_path / "t")["."]}
    # the whole snapshot: the paths as backed up, below the target
    assert restore(repo, snap.id, tmp_path / "all").returncode == 0
    assert state(tmp_path / "all" / str(src).lstrip("/")) == state(src)
    # one file: into the target under its own name
    out = restore(repo, f"latest:{src}/docs/deep/b.bin", tmp_path / "one")
    assert out.returncode == 0, out.stderr
    assert os.listdir(tmp_path / "one") == ["b.bin"]
    assert (tmp_path / "one" / "b.bin").read_bytes() == (src / "docs/deep/b.bin").read_bytes()
    missing = restore(repo, f"latest:{src}/nope", tmp_path / "none")
    assert missing.returncode == 2 and "nope is not in file snapshot" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_backup_dir_then_restore(repo: Repository, tmp_path: Path) -> None:
    """The real ``backup DIR`` (files-backup) and restore meet: trees equal."""
    src = small_tree(tmp_path / "src")
    os.link(src / "top.txt", src / "docs" / "top-again")
    with open(src / "sparse", "wb") as f:
        f.truncate(32 * MiB)
    backup = blockvault("-r", repo.location, "backup", src)
    assert backup.returncode == 0, backup.stderr
    out = restore(repo, f"latest:{src}", tmp_path / "t")
    assert out.returncode == 0, out.stderr
    assert state(tmp_path / "t") == state(src) | {".": state(tmp_path / "t")["."]}
    assert os.stat(tmp_path / "t/top.txt").st_ino == os.stat(tmp_path / "t/docs/top-again").st_ino
    assert os.stat(tmp_path / "t/sparse").st_blocks == 0


@needs_root
def test_everything_linux_keeps_survives_on_ext4(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    image = tmp_path / "fs.img"
    sh("truncate", "-s", "256M", image)
    sh("mkfs.ext4", "-q", "-F", image)
    mnt = mounted(loop(image), tmp_path / "mnt", "-o", "acl,user_xattr")
    src = mnt / "src"
    small_tree(src)
    (src / "owned").mkdir(mode=0o750)
    os.chown(src / "owned", 1234, 5678)  # ids without names here
    (src / "owned" / "suid").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "owned" / "suid", 0, 5678)
    os.chmod(src / "owned" / "suid", 0o4755)  # setuid survives the chown after it
    (src / "hard1").write_bytes(b"shared inode\n")
    os.link(src / "hard1", src / "docs" / "hard2")
    os.mkfifo(src / "fifo", 0o640)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with open(src / "sparse", "wb") as f:  # 64 MiB, 8 KiB of data at 40 MiB
        f.truncate(64 * MiB)
        f.seek(40 * MiB)
        f.write(b"x" * 8192)
    os.setxattr(src / "top.txt", "user.note", b"\x00binary\xff value")
    os.setxattr(src / "top.txt", "security.capability", CAPABILITY)
    sh("setfacl", "-m", "u:4321:rwx,g:8765:r-x", src / "docs")
    sh("setfacl", "-d", "-m", "u:4321:r-x", src / "docs")
    os.utime(src / "docs", ns=(5, 1_234_567_890_987_654_321))
    repo = Repository.init(str(tmp_path / "repo"))
    snap = snapshot_of(repo, src)
    target = mnt / "restored"
    out = restore(repo, f"{snap.id}:{src}", target, "--verify", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["verified"] == result["files"] - result["hardlinks"] > 0
    assert result["hardlinks"] == 1
    want, got = state(src), state(target)
    got["."] = want["."]  # the target itself is not the snapshot's
    assert got == want
    assert os.stat(target / "hard1").st_ino == os.stat(target / "docs/hard2").st_ino
    assert os.stat(target / "sparse").st_blocks * 512 < 1 * MiB  # holes, not zeros
    assert sh("getfacl", "-pn", target / "docs").replace(str(target), "X") == sh(
        "getfacl", "-pn", src / "docs"
    ).replace(str(src), "X")
    assert "cap_net_raw=ep" in sh("getcap", target / "top.txt")
    assert os.stat(target / "owned/suid").st_mode & stat.S_ISUID


def test_overwrite_modes_and_a_rerun_skips_what_is_right(repo: Repository, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    snap = snapshot_of(repo, src)
    address = f"{snap.id}:{src}"
    target = tmp_path / "t"
    assert restore(repo, address, target).returncode == 0
    # a rerun writes nothing: every file is right by size and mtime
    again = json.loads(restore(repo, address, target, "--json").stdout)
    assert again["unchanged"] == 5 and again["bytes_written"] == 0  # 3 files, 2 symlinks
    edited = target / "docs" / "a.txt"
    edited.write_bytes(b"edited, longer\n")
    (target / "extra").write_bytes(b"mine")
    # never: the edit stays
    assert restore(repo, address, target, "--overwrite", "never").returncode == 0
    assert edited.read_bytes() == b"edited, longer\n"
    # if-changed: the edit goes (size and mtime differ), the extra file stays
    assert restore(repo, address, target).returncode == 0
    assert edited.read_bytes() == b"alpha\n" and (target / "extra").exists()
    # always: rewrites a file even when size and mtime agree
    mtime = os.stat(edited).st_mtime_ns
    edited.write_bytes(b"ALPHA\n")
    os.utime(edited, ns=(mtime, mtime))
    assert restore(repo, address, target).returncode == 0
    assert edited.read_bytes() == b"ALPHA\n"  # the quick check cannot see this one
    assert restore(repo, address, target, "--overwrite", "always").returncode == 0
    assert edited.read_bytes() == b"alpha\n"


def test_dry_run_lists_and_changes_nothing(repo: Repository, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    snap = snapshot_of(repo, src)
    target = tmp_path / "t"
    assert restore(repo, f"{snap.id}:{src}", target).returncode == 0
    (target / "top.txt").write_bytes(b"changed\n")
    (target / "extra").write_bytes(b"mine")
    (target / "docs" / "deep" / "b.bin").unlink()
    before = state(target)
    out = restore(repo, f"{snap.id}:{src}", target, "--dry-run", "--delete")
    assert out.returncode == 0, out.stderr
    lines = set(out.stdout.splitlines()[:-1])
    assert lines == {"~ /top.txt", "- /extra", "+ /docs/deep/b.bin"}
    assert state(target) == before
    fresh = restore(repo, f"{snap.id}:{src}", tmp_path / "new", "--dry-run")
    assert fresh.returncode == 0 and not (tmp_path / "new").exists()
    assert "+ /docs/deep/b.bin" in fresh.stdout


def test_delete_stays_inside_the_target(repo: Repository, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    snap = snapshot_of(repo, src)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"not yours")
    target = tmp_path / "t"
    assert restore(repo, f"{snap.id}:{src}", target).returncode == 0
    (target / "docs" / "extra").mkdir()
    (target / "docs" / "extra" / "x").write_bytes(b"x")
    (target / "out").symlink_to(victim)  # a symlink to outside: unlinked, not followed
    (target / "empty" / "in").symlink_to(victim / "keep")
    out = restore(repo, f"{snap.id}:{src}", target, "--delete", "--exclude", "/top.txt")
    assert out.returncode == 0, out.stderr
    assert not (target / "docs" / "extra").exists() and not os.path.lexists(target / "out")
    assert not os.path.lexists(target / "empty" / "in")
    assert (victim / "keep").read_bytes() == b"not yours"
    assert (target / "top.txt").exists()  # excluded: neither restored again nor deleted
    assert state(target) == state(src) | {".": state(target)["."]}


def test_include_and_exclude(repo: Repository, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    snap = snapshot_of(repo, src)
    a = restore(repo, f"{snap.id}:{src}", tmp_path / "a", "--include", "*.txt")
    assert a.returncode == 0, a.stderr
    got = {str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*")}
    assert got == {"docs", "docs/a.txt", "top.txt"}
    assert os.stat(tmp_path / "a/docs").st_mtime_ns == os.stat(src / "docs").st_mtime_ns
    b = restore(
        repo, f"{snap.id}:{src}", tmp_path / "b", "--exclude", "deep/", "--exclude", "*.txt"
    )
    assert b.returncode == 0, b.stderr
    got = {str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*")}
    assert got == {"docs", "empty", "link", "abs"}


def test_an_interrupted_restore_reruns_to_the_same_tree(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for k in range(12):
        (src / f"f{k:02}").write_bytes(os.urandom(MiB + k))
    snap = snapshot_of(repo, src)
    target = tmp_path / "t"
    command = ["blockvault", "-r", repo.location, "restore", f"{snap.id}:{src}", str(target)]
    # frozen at the 20th object read (of 24 chunks and a few trees), then killed: at
    # most 8 chunks are fetched ahead, so some files are done and some are not
    assert kill_when_stopped(command, "signal=STOP,every=20,operations=read,under=data/")
    done = [p for p in target.iterdir() if not p.name.startswith(".blockvault-tmp-")]
    assert 0 < len(done) < 12
    for path in done:  # what is there under its name is whole
        assert path.read_bytes() == (src / path.name).read_bytes()
    out = restore(repo, f"{snap.id}:{src}", target, "--json", "--delete")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["unchanged"] == len(done)
    assert state(target) == state(src) | {".": state(target)["."]}


def hostile_tree() -> list[dict[str, object]]:
    file = {"type": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 1, "atime_ns": 1}
    return [
        {**file, "name": "ok", "content": b"fine\n"},
        {**file, "name": "x" * 300, "content": b"too long a name\n"},
        {**file, "name": "caf\udce9", "content": b"latin-1 name\n"},
        {
            "type": "dir",
            "name": "d",
            "mode": 0o755,
            "subtree": [{**file, "name": "inner", "content": b"below d\n"}],
        },
        {
            "type": "dir",
            "name": "evil",
            "mode": 0o755,
            "subtree": [
                {**file, "name": "../escape", "content": b"out\n"},
            ],
        },
        {"type": "symlink", "name": "up", "mode": 0o777, "target": "../../victim"},
        {"type": "symlink", "name": "root", "mode": 0o777, "target": "/"},
    ]


def test_a_hostile_snapshot_writes_nothing_outside(repo: Repository, tmp_path: Path) -> None:
    snap = hand_built(repo, hostile_tree())
    victim = tmp_path / "victim"
    victim.mkdir()
    target = tmp_path / "t"
    target.mkdir()
    (target / "d").symlink_to(victim)  # a symlinked directory already in the target
    kept = restore(repo, snap.id, target, "--overwrite", "never")
    assert kept.returncode == 4, kept.stderr  # a tree that does not parse is damage
    assert "exists and is not a directory; kept" in kept.stderr
    assert "longer than 255 bytes" in kept.stderr and "evil" in kept.stderr
    assert "Traceback" not in kept.stderr
    assert os.listdir(victim) == []
    assert (target / os.fsdecode(b"caf\xe9")).read_bytes() == b"latin-1 name\n"
    replaced = restore(repo, snap.id, target)
    assert replaced.returncode == 4
    assert not (target / "d").is_symlink() and (target / "d" / "inner").read_bytes() == b"below d\n"
    assert os.listdir(victim) == []
    assert os.readlink(target / "up") == "../../victim" and os.readlink(target / "root") == "/"
    names = set(os.listdir(target))
    assert names == {"ok", os.fsdecode(b"caf\xe9"), "d", "evil", "up", "root"}
    assert os.listdir(target / "evil") == []  # its unreadable tree: made, left empty
    assert {p.name for p in tmp_path.iterdir()} == {"repo", "victim", "t"}


@needs_root
def test_owners_by_name_unless_numeric(repo: Repository, tmp_path: Path) -> None:
    # recorded as uid/gid 4242 named "root" (the ids of another machine): by name here
    node = {"type": "file", "mode": 0o640, "uid": 4242, "gid": 4243, "mtime_ns": 7}
    named = {**node, "name": "named", "user": "root", "group": "root", "content": b"a"}
    unknown = {**node, "name": "unknown", "user": "nobody-here-xyz", "content": b"b"}
    snap = hand_built(repo, [named, unknown])
    assert restore(repo, snap.id, tmp_path / "byname").returncode == 0
    owners = {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in (tmp_path / "byname").iterdir()}
    assert owners == {"named": (0, 0), "unknown": (4242, 4243)}
    assert restore(repo, snap.id, tmp_path / "ids", "--numeric-owner").returncode == 0
    owners = {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in (tmp_path / "ids").iterdir()}
    assert owners == {"named": (4242, 4243), "unknown": (4242, 4243)}


def test_wrong_requests_get_one_line(repo: Repository, tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    snap = snapshot_of(repo, src)
    (tmp_path / "file").write_bytes(b"")
    cases = {
        "is not a directory": (snap.id, tmp_path / "file"),
        "a partition is restored with -p 2": (f"{snap.id}:2/x", tmp_path / "t"),
        "/a/b is not in file snapshot": (f"{snap.id}:/a/./b", tmp_path / "t"),
    }
    image = tmp_path / "disk.img"
    sh("truncate", "-s", "8M", image)
    sh("mkfs.ext4", "-q", "-F", image)
    disk = blockvault("-r", repo.location, "backup", image)
    assert disk.returncode == 0, disk.stderr
    disk_id = disk.stdout.split()[-1]
    cases["are for file snapshots"] = (disk_id, tmp_path / "x.img", "--delete")
    cases["a disk image is restored onto a disk"] = (disk_id, tmp_path)
    for message, args in cases.items():
        out = restore(repo, *args)
        assert out.returncode == 2, (message, out.stderr)
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "t").exists() and not (tmp_path / "x.img").exists()
    # the metadata of a right file is set again (=), its content not rewritten
    target = tmp_path / "again"
    assert restore(repo, snap.id + ":" + str(src), target).returncode == 0
    os.chmod(target / "top.txt", 0o600)
    inode = os.stat(target / "top.txt").st_ino
    dry = restore(repo, snap.id + ":" + str(src), target, "--dry-run")
    assert dry.stdout.splitlines()[:-1] == ["= /top.txt"]
    assert restore(repo, snap.id + ":" + str(src), target).returncode == 0
    st = os.stat(target / "top.txt")
    assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (inode, 0o644)
