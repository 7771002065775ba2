"""FUSE mounts of file snapshots: one snapshot's files, and the whole repository by
id, time and host (as restic mount). Oracles: the source tree through os calls."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from blockvault.repo.repository import Repository
from tests.conftest import IS_ROOT, blockvault
from tests.files.test_restore import small_tree, state

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="FUSE mounts need root here"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fuse3 is not installed"),
]


def bv(repo: Repository, *args: str | Path) -> str:
    out = blockvault("-r", repo.location, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def readonly(st: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """What a read-only mount shows: write bits gone, nothing else changed."""
    return {k: (int(v[0]) & ~0o222, *v[1:]) for k, v in st.items()}  # type: ignore[call-overload]


def test_mount_one_file_snapshot_and_the_whole_repository(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    src = small_tree(tmp_path / "src")
    first = bv(repo, "backup", src).strip().splitlines()[-1]
    (src / "later.txt").write_bytes(b"second snapshot\n")
    second = bv(repo, "backup", "--host", "other", src).strip().splitlines()[-1]
    one = tmp_path / "one"
    one.mkdir()
    bv(repo, "mount", first, one)
    try:
        inside = one / str(src).lstrip("/")
        want = readonly(state(src))
        want.pop("later.txt")
        got = state(inside)
        got["."] = want["."]
        assert got == want
    finally:
        bv(repo, "umount", one)
    everything = tmp_path / "all"
    everything.mkdir()
    bv(repo, "mount", everything)
    try:
        assert sorted(os.listdir(everything)) == ["hosts", "ids", "snapshots"]
        assert sorted(os.listdir(everything / "ids")) == sorted([first[:12], second[:12]])
        assert len(os.listdir(everything / "snapshots")) == 2
        hosts = sorted(os.listdir(everything / "hosts"))
        assert "other" in hosts and len(hosts) == 2
        (when,) = os.listdir(everything / "hosts" / "other")
        later = everything / "hosts" / "other" / when / str(src).lstrip("/") / "later.txt"
        assert later.read_bytes() == b"second snapshot\n"
        old = everything / "ids" / first[:12] / str(src).lstrip("/")
        assert not (old / "later.txt").exists()
        assert (old / "docs/deep/b.bin").read_bytes() == (src / "docs/deep/b.bin").read_bytes()
        assert os.readlink(old / "link") == "docs/a.txt"
    finally:
        bv(repo, "umount", everything)
    assert os.listdir(everything) == []
