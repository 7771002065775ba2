"""End to end: a hostile repository whose chunk is a huge (sparse) file is refused
from the file's size, with one line naming the chunk, by restore and by check."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from blockvault.repo import Repository
from blockvault.repo import format as fmt
from tests.compat.test_compat import FROZEN
from tests.conftest import blockvault_peak

HUGE = 8 << 30


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the frozen plain repository with one chunk of its first snapshot
    replaced by a sparse 8 GiB file; returns the copy and that chunk's id."""
    repo_dir = tmp_path / "repo"
    shutil.copytree(FROZEN / "plain", repo_dir)
    repo = Repository.open(str(repo_dir))
    chunk_id = min(repo.load_index(repo.load_snapshot(_first_id())).chunk_ids())
    with (repo_dir / fmt.chunk_name(chunk_id)).open("wb") as f:
        f.truncate(HUGE)
    return repo_dir, chunk_id


def _first_id() -> str:
    for line in (FROZEN / "EXPECTED").read_text().splitlines():
        repo, tag, snapshot, _ = line.split()
        if (repo, tag) == ("plain", "first"):
            return snapshot
    raise AssertionError("EXPECTED names no first plain snapshot")


@pytest.mark.parametrize("command", ["restore", "check"])
def test_a_huge_chunk_is_refused_unread_with_one_line(
    hostile: tuple[Path, str], tmp_path: Path, command: str
) -> None:
    repo_dir, chunk_id = hostile
    args = ["restore", _first_id(), tmp_path / "out.img"]
    if command == "check":
        args = ["check", "--read-data"]
    started = time.monotonic()
    proc, peak_kib = blockvault_peak("-r", repo_dir, *args)
    assert time.monotonic() - started < 60
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if chunk_id in line]
    assert lines, proc.stderr
    # check finds it from the listed size, before --read-data would read it
    said = f"{HUGE} bytes, more than the" if command == "restore" else f"size, {HUGE} bytes"
    assert said in lines[0]
    # the run stayed far below the 8 GiB it was offered
    assert peak_kib < (1 << 30) >> 10
