"""``snapshots`` when there is nothing to list: an empty repository says how to make
its first backup (and the command it gives works); one narrowed to nothing by
``--host``/``--source`` says so. ``--json`` stays ``[]`` for scripts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk
from tests.conftest import blockvault

MiB = 1 << 20


def test_an_empty_repository_says_how_to_make_the_first_backup(tmp_path: Path) -> None:
    repo = tmp_path / "a repo"  # a space: the suggested command must quote it
    assert blockvault("-r", repo, "init").returncode == 0
    listed = blockvault("-r", repo, "snapshots")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.strip().splitlines()  # no bare table header
    assert line.startswith(f"no snapshots in {repo} yet")
    assert json.loads(blockvault("-r", repo, "snapshots", "--json").stdout) == []

    suggested = re.search(r"make the first with: (blockvault .*) backup /dev/sdX$", line)
    assert suggested is not None, line
    disk = build_disk(DiskSpec("gpt", 8 * MiB, [PartitionSpec("ext4", 0, "root")]), tmp_path / "d")
    argv = [*shlex.split(suggested.group(1))[1:], "backup", "--json", str(disk.path)]
    made = blockvault(*argv)
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)["id"]
    assert [s["id"] for s in json.loads(blockvault("-r", repo, "snapshots", "--json").stdout)] == [
        first
    ]

    narrowed = blockvault("--host", "nobody", "-r", repo, "snapshots")
    assert narrowed.returncode == 0, narrowed.stderr
    assert narrowed.stdout.strip().splitlines() == [
        "no snapshot matches --host nobody; the repository holds 1 snapshot; "
        f"list them all with: blockvault -r {shlex.quote(str(repo))} snapshots"
    ]
    assert (
        json.loads(blockvault("--host", "nobody", "-r", repo, "snapshots", "--json").stdout) == []
    )
