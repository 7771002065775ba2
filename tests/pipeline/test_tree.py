"""The safe tree writer on a real directory: nothing lands outside, ever.

Each test keeps a ``victim`` directory beside the destination (where an escape
would land) and asserts it is still empty; oracles are os.lstat, readlink and
the bytes on disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.errors import TargetNotEmpty, UnsafeName
from blockvault.pipeline.tree import HOLE_GRAIN, Metadata, TreeWriter
from tests.conftest import needs_root


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "dest").mkdir()
    (tmp_path / "victim").mkdir()
    return tmp_path / "dest"


def everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def untouched(dest: Path) -> None:
    assert everything(dest.parent / "victim") == set()
    assert everything(dest.parent) <= {"dest", "victim"} | {"dest/" + p for p in everything(dest)}
    assert not [p for p in everything(dest) if ".blockvault-tmp-" in p]  # no temp left


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "../victim/x", "/etc", "a\0b", "é" * 128, "x" * 256],
    ids=["empty", "dot", "dotdot", "slash", "up", "absolute", "nul", "256-bytes", "256-ascii"],
)
def test_hostile_names_are_refused_and_nothing_is_written(dest: Path, name: str) -> None:
    with TreeWriter(dest) as writer:
        for make in (
            lambda: writer.write_file((name,), [b"x"]),
            lambda: writer.make_dir((name,)),
            lambda: writer.make_symlink((name,), "/etc"),
            lambda: writer.write_file(("ok", name), [b"x"]),
            lambda: writer.write_file((name, "ok"), [b"x"]),
        ):
            with pytest.raises(UnsafeName):
                make()
    assert everything(dest) == set()
    untouched(dest)


def test_longest_name_and_windows_separators(dest: Path) -> None:
    with TreeWriter(dest) as writer:
        writer.write_file(("é" * 127 + "x",), [b"255 bytes"])
        writer.write_file(("back\\slash",), [b"a plain name on Linux"])
    with TreeWriter(dest, separators="/\\") as writer, pytest.raises(UnsafeName):
        writer.write_file(("..\\..\\victim\\x",), [b"from NTFS or FAT: a path"])
    assert (dest / ("é" * 127 + "x")).read_bytes() == b"255 bytes"
    assert everything(dest) == {"é" * 127 + "x", "back\\slash"}
    untouched(dest)


def test_symlinks_in_the_destination_are_never_followed(dest: Path) -> None:
    victim = dest.parent / "victim"
    os.symlink(victim, dest / "link")  # already there, made by someone else
    with TreeWriter(dest, overwrite=True) as writer:
        with pytest.raises(UnsafeName, match="never followed"):
            writer.write_file(("link", "passwd"), [b"owned"])
        with pytest.raises(UnsafeName):
            writer.make_dir(("link", "sub"))
        with pytest.raises(UnsafeName):
            writer.make_symlink(("link", "sub"), "/")
        # one the writer made itself is not followed either
        writer.make_symlink(("etc",), str(victim))
        with pytest.raises(UnsafeName):
            writer.write_file(("etc", "passwd"), [b"owned"])
    assert os.readlink(dest / "etc") == str(victim)
    untouched(dest)


def test_overwrite_replaces_a_symlink_itself_never_its_target(dest: Path) -> None:
    victim = dest.parent / "victim"
    (dest.parent / "outside.txt").write_text("keep me")
    os.symlink(dest.parent / "outside.txt", dest / "file")
    os.symlink(victim, dest / "dir")
    with TreeWriter(dest) as writer, pytest.raises(TargetNotEmpty):
        writer.write_file(("file",), [b"new"])
    with TreeWriter(dest, overwrite=True) as writer:
        writer.write_file(("file",), [b"new"])
        writer.make_dir(("dir",))  # a symlink in the way of a directory goes
        writer.write_file(("dir", "inside"), [b"new"])
    assert (dest.parent / "outside.txt").read_text() == "keep me"
    assert not (dest / "file").is_symlink() and (dest / "file").read_bytes() == b"new"
    assert not (dest / "dir").is_symlink() and (dest / "dir" / "inside").exists()
    assert everything(victim) == set()


def test_existing_entries_need_overwrite_and_directories_are_merged(dest: Path) -> None:
    (dest / "d").mkdir()
    (dest / "d" / "mine").write_text("mine")
    (dest / "f").write_text("old")
    with TreeWriter(dest) as writer:
        with pytest.raises(TargetNotEmpty, match="--yes"):
            writer.make_dir(("d",))
        with pytest.raises(TargetNotEmpty):
            writer.write_file(("f",), [b"new"])
    with TreeWriter(dest, overwrite=True) as writer:
        writer.make_dir(("d",))
        writer.write_file(("d", "theirs"), [b"theirs"])
        writer.write_file(("f",), [b"new"])
    with (
        TreeWriter(dest, overwrite=True) as writer,
        pytest.raises(TargetNotEmpty, match="directory is in the way"),
    ):
        writer.write_file(("d",), [b"a file where a directory is"])
    assert everything(dest) == {"d", "d/mine", "d/theirs", "f"}
    assert (dest / "f").read_text() == "new"


def test_a_name_written_twice_is_refused_and_the_first_kept(dest: Path) -> None:
    with TreeWriter(dest, overwrite=True) as writer:
        writer.make_symlink(("x",), "/etc")
        with pytest.raises(UnsafeName, match="twice"):
            writer.make_dir(("x",))
        writer.write_file(("f",), [b"first"])
        with pytest.raises(UnsafeName, match="twice"):
            writer.write_file(("f",), [b"second"])
    assert os.readlink(dest / "x") == "/etc" and (dest / "f").read_bytes() == b"first"


def test_a_file_appears_only_complete(dest: Path) -> None:
    seen: list[bool] = []

    def blocks(fail: bool) -> Iterator[bytes]:
        for n in range(3):
            seen.append((dest / "f").exists())  # while it is written: not under its name
            yield bytes([n + 1]) * 1000
        if fail:
            raise OSError(5, "the source broke")

    with TreeWriter(dest) as writer:
        with pytest.raises(OSError, match="the source broke"):
            writer.write_file(("f",), blocks(fail=True))
        assert everything(dest) == set()  # the temporary file is gone too
        writer.write_file(("g",), blocks(fail=False))
    assert seen == [False] * 6
    assert (dest / "g").read_bytes() == b"\1" * 1000 + b"\2" * 1000 + b"\3" * 1000
    untouched(dest)


def test_zero_blocks_become_holes(dest: Path) -> None:
    data = [bytes(4 * HOLE_GRAIN), b"x" * HOLE_GRAIN, bytes(8 * HOLE_GRAIN)]
    with TreeWriter(dest) as writer:
        size = writer.write_file(("sparse",), data)
    st = (dest / "sparse").stat()
    assert size == st.st_size == 13 * HOLE_GRAIN
    assert (dest / "sparse").read_bytes() == b"".join(data)
    assert st.st_blocks * 512 < 4 * HOLE_GRAIN  # one grain of data, not thirteen


def test_metadata_is_set_without_following_symlinks(dest: Path) -> None:
    victim = dest.parent / "victim"
    before = victim.stat()
    t1, t2 = 1_600_000_000_123_456_789, 1_500_000_000_987_654_321
    with TreeWriter(dest) as writer:
        writer.make_dir(("d",))
        writer.write_file(("d", "f"), [b"x"], Metadata(0o4640 | stat.S_IFREG, None, None, t2, t1))
        writer.make_symlink(("d", "l"), str(victim), Metadata(0o777, None, None, t1, t2))
        writer.set_metadata(("d",), Metadata(0o750, None, None, t1, t1))
        writer.set_metadata(("d", "l"), Metadata(0o700, None, None, t2, t2))
    f, d, link = (dest / "d" / "f").stat(), (dest / "d").stat(), (dest / "d" / "l").lstat()
    assert (stat.S_IMODE(f.st_mode), f.st_mtime_ns, f.st_atime_ns) == (0o4640, t1, t2)
    assert (stat.S_IMODE(d.st_mode), d.st_mtime_ns) == (0o750, t1)
    assert link.st_mtime_ns == t2
    after = victim.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


@needs_root
def test_owners_are_set_only_when_asked(dest: Path) -> None:
    meta = Metadata(0o644, 1234, 5678, None, None)
    with TreeWriter(dest) as writer:
        writer.write_file(("plain",), [b"x"], meta)
    with TreeWriter(dest, owners=True) as writer:
        writer.write_file(("owned",), [b"x"], meta)
        writer.make_symlink(("link",), "/etc", meta)
    assert (dest / "plain").stat().st_uid == 0
    assert ((dest / "owned").stat().st_uid, (dest / "owned").stat().st_gid) == (1234, 5678)
    assert ((dest / "link").lstat().st_uid, (dest / "link").lstat().st_gid) == (1234, 5678)
    assert os.stat("/etc").st_uid == 0
