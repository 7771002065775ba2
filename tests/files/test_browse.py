"""ls, cat, find and extract on file snapshots, exactly as on disk snapshots.

Oracles: os.lstat and the bytes of the source tree."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from blockvault.repo.repository import Repository
from tests.conftest import blockvault
from tests.files.snapshots import hand_built, snapshot_of
from tests.files.test_restore import MiB, hostile_tree, small_tree, state


def bv(repo: Repository, *args: str | Path) -> str:
    out = blockvault("-r", repo.location, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_ls_cat_find_extract(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    src = small_tree(tmp_path / "src")
    with open(src / "sparse", "wb") as f:
        f.truncate(5 * MiB)
        f.seek(3 * MiB + 5)
        f.write(b"in the middle")
    snap = snapshot_of(repo, src)
    at = f"{snap.id[:12]}:{src}"
    listing = json.loads(bv(repo, "ls", "--json", f"{at}/docs"))
    entries = {e["path"]: e for e in listing["entries"]}
    assert set(entries) == {"a.txt", "deep"}
    st = os.lstat(src / "docs" / "a.txt")
    a = entries["a.txt"]
    assert (a["size"], a["mtime_ns"], a["mode"]) == (
        st.st_size,
        st.st_mtime_ns,
        stat.filemode(st.st_mode),
    )
    assert bv(repo, "ls", "-R", at).splitlines() == sorted(
        str(p.relative_to(src)) for p in src.rglob("*")
    )
    assert any(
        line.endswith(" link -> docs/a.txt") for line in bv(repo, "ls", "-l", at).split("\n")
    )
    # cat through a symlink, a big file in pieces, a sparse one
    assert bv(repo, "cat", f"{at}/link") == "alpha\n"
    for name in ("docs/deep/b.bin", "sparse"):
        command = ["blockvault", "-r", repo.location, "cat", f"{at}/{name}"]
        got = subprocess.run(command, capture_output=True, check=True).stdout
        assert got == (src / name).read_bytes()
    found = json.loads(bv(repo, "find", "--json", "*.txt"))
    assert sorted(m["path"] for m in found) == [f"{src}/docs/a.txt", f"{src}/top.txt"]
    assert f"{snap.id[:12]}:{src}/top.txt" in bv(repo, "find", "top.txt")
    bv(repo, "extract", f"{at}/docs", tmp_path / "out")
    assert state(tmp_path / "out") == state(src / "docs")
    (tmp_path / "into").mkdir()  # an existing directory: the copy goes inside, named
    bv(repo, "extract", f"{snap.id}:/", tmp_path / "into")
    assert state(tmp_path / "into" / snap.id[:12] / str(src).lstrip("/")) == state(src)
    missing = blockvault("-r", repo.location, "cat", f"{at}/nope")
    assert missing.returncode == 2 and "does not exist in file snapshot" in missing.stderr
    partition = blockvault("-r", repo.location, "ls", f"{snap.id}:2/")
    assert partition.returncode == 2 and "without partitions" in partition.stderr


def test_extract_of_a_hostile_snapshot_stays_inside(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    snap = hand_built(repo, hostile_tree())
    (tmp_path / "out").mkdir()
    out = blockvault("-r", repo.location, "extract", f"{snap.id}:/", tmp_path / "out" / "x")
    assert out.returncode == 4, out.stderr  # the tree with "../escape" is damage
    assert "cannot be a file name" in out.stderr and "Traceback" not in out.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"repo", "out"}
    # extract stops at the damaged tree (entries in name order); what came before is there
    assert (tmp_path / "out" / "x" / "d" / "inner").read_bytes() == b"below d\n"
