"""``blockvault … | head``: a reader that goes away stops a listing the way it stops
``cat``, with no message and the status of a death by SIGPIPE (128 + 13).

The reader's end of a real pipe is closed before blockvault starts, so every write
meets it closed: deterministic, no race with how much ``head`` read.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from blockvault.errors import EXIT_STDOUT_CLOSED
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.cli.runner import ok, run
from tests.conftest import need_tools

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("sfdisk", "mkfs.ext4")
    work = tmp_path_factory.mktemp("closed-stdout")
    make_tree(work / "tree", 2 * MiB, seed=16)
    disk: BuiltDisk = build_disk(
        DiskSpec("gpt", 40 * MiB, [PartitionSpec("ext4", 34 * MiB, "", work / "tree")]),
        work / "disk.img",
    )
    ok(run("-r", work / "repo", "init"))
    ok(run("-r", work / "repo", "backup", disk.path))
    return work / "repo"


def into_closed_pipe(*args: str | Path) -> tuple[int, str]:
    reader, writer = os.pipe()
    os.close(reader)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKVAULT_")}
    try:
        proc = subprocess.run(
            ["blockvault", *map(str, args)],
            stdout=writer,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            check=False,
        )
    finally:
        os.close(writer)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "listing",
    [
        ["ls", "-R", "latest:1"],  # plain lines (click.echo)
        ["ls", "-R", "--json", "latest:1"],  # JSON
        ["ls", "latest"],  # a rich table
        ["snapshots"],  # a rich table, another command
    ],
    ids=["lines", "json", "table", "snapshots"],
)
def test_a_listing_into_a_closed_pipe_stops_quietly(repo: Path, listing: list[str]) -> None:
    assert ok(run("-r", repo, *listing))  # it does print something
    code, stderr = into_closed_pipe("-r", repo, *listing)
    assert stderr == "", stderr
    assert code == EXIT_STDOUT_CLOSED == 128 + signal.SIGPIPE


def test_a_real_error_still_speaks_when_stdout_is_closed(repo: Path) -> None:
    code, stderr = into_closed_pipe("-r", repo, "ls", "nosuchsnapshot")
    assert code not in (0, EXIT_STDOUT_CLOSED)
    assert "nosuchsnapshot" in stderr and "Traceback" not in stderr, stderr
