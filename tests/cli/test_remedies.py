"""Every remedy that suggests a command line is one a user can paste: it is taken
from the error message and run as it stands (only a placeholder such as DIR filled
in), and it must succeed and show what the message promised."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk
from tests.cli.runner import ok, one_line_error, run
from tests.conftest import IS_ROOT, need_tools

MiB = 1024 * 1024


def suggested(line: str, **placeholders: str | Path) -> list[str]:
    """The arguments of the one ``'blockvault ...'`` command ``line`` suggests."""
    commands = re.findall(r"'blockvault ([^']*)'", line)
    assert len(commands) == 1, line
    args = shlex.split(commands[0])
    return [str(placeholders.get(a, a)) for a in args]


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuiltDisk]:
    need_tools("sfdisk", "mkfs.ext4", "mkswap")
    work = tmp_path_factory.mktemp("remedies")
    (work / "tree").mkdir()
    (work / "tree" / "hello.txt").write_text("hello")
    spec = DiskSpec(
        "gpt",
        24 * MiB,
        [PartitionSpec("ext4", 12 * MiB, None, work / "tree"), PartitionSpec("swap", 0)],
    )
    disk = build_disk(spec, work / "disk.img")
    repo = work / "repo with space"
    ok(run("-r", repo, "init"))
    ok(run("-r", repo, "backup", disk.path))
    return repo, disk


def test_a_missing_partition_suggests_info_with_its_repository(
    backed: tuple[Path, BuiltDisk],
) -> None:
    repo, _disk = backed
    line = one_line_error(run("-r", repo, "ls", "latest:7/"), 2, "no imaged partition 7")
    listed = ok(run(*suggested(line)))
    assert "ext4" in listed and "swap" in listed, listed


def test_an_unknown_snapshot_suggests_snapshots_with_its_repository(
    backed: tuple[Path, BuiltDisk],
) -> None:
    repo, _disk = backed
    line = one_line_error(run("-r", repo, "ls", "feedface:1/"), 3, "feedface")
    listed = ok(run(*suggested(line)))
    (snapshot,) = json.loads(ok(run("-r", repo, "snapshots", "--json")))
    assert snapshot["id"][:12] in listed, listed


def test_a_missing_repository_suggests_init(tmp_path: Path) -> None:
    repo = tmp_path / "not yet"
    line = one_line_error(run("-r", repo, "snapshots"), 3, "no repository")
    ok(run(*suggested(line)))
    assert ok(run("-r", repo, "snapshots", "--json")).strip() == "[]"


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="FUSE mounts need root")
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
@pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fuse3 is not installed")
def test_an_unbrowsable_partition_suggests_a_mount_that_shows_its_image(
    backed: tuple[Path, BuiltDisk], tmp_path: Path
) -> None:
    repo, disk = backed
    line = one_line_error(run("-r", repo, "ls", "latest:2/"), 2, "cannot be browsed")
    where = tmp_path / "mnt"
    where.mkdir()
    image = re.search(r"as DIR/(p2\.img)", line)
    assert image is not None, line
    ok(run(*suggested(line, DIR=where)))
    try:
        swap = disk.partitions[1]
        with open(disk.path, "rb") as source:
            source.seek(swap.offset)
            assert (where / image[1]).read_bytes() == source.read(swap.size)
    finally:
        ok(run("umount", where))
