"""``latest`` never picks another machine's or another disk's snapshot: snapshots
record their source's identity, ``latest`` resolves within one origin (host, disk,
imaged partitions) and is an error listing the candidates when there are several,
unless ``--host``/``--source`` narrows it. Real disks, real backups, a real second
host name (a UTS namespace), a real loop device over an image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from blockvault.disk.identity import source_identity
from blockvault.repo import Repository
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.compat.test_compat import FROZEN
from tests.conftest import blockvault, needs_root

MiB = 1 << 20


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two image files of two small disks (ext4 + ext4)."""
    work = tmp_path_factory.mktemp("latest")
    make_tree(work / "tree", 1 * MiB, seed=5)
    spec = DiskSpec(
        "gpt",
        24 * MiB,
        [PartitionSpec("ext4", 10 * MiB, "one", work / "tree"), PartitionSpec("ext4", 0, "two")],
    )
    first = build_disk(spec, work / "first.img").path
    second = work / "second.img"
    shutil.copyfile(first, second)  # same bytes, another disk: another identity
    return first, second


def run(repo: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return blockvault("-r", repo, *args)


def backup(repo: Path, source: str | Path, *options: str) -> str:
    proc = run(repo, "backup", "--json", *options, source)
    assert proc.returncode == 0, proc.stderr
    snapshot_id: str = json.loads(proc.stdout)["id"]
    return snapshot_id


def latest(repo: Path, *selector: str) -> subprocess.CompletedProcess[str]:
    return blockvault(*selector, "-r", repo, "info", "--json", "latest")


def latest_id(repo: Path, *selector: str) -> str:
    proc = latest(repo, *selector)
    assert proc.returncode == 0, proc.stderr
    snapshot_id: str = json.loads(proc.stdout)["snapshot"]["id"]
    return snapshot_id


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert run(path, "init", "--chunk-size", "64KiB").returncode == 0
    return path


def test_snapshots_record_the_identity_of_their_source(
    repo: Path, disks: tuple[Path, Path]
) -> None:
    backup(repo, disks[0])
    (listed,) = json.loads(run(repo, "snapshots", "--json").stdout)
    assert listed["source_id"] == f"image:{disks[0].resolve()}"


def test_latest_of_two_disks_is_an_error_listing_both(repo: Path, disks: tuple[Path, Path]) -> None:
    first, second = disks
    a1 = backup(repo, first)
    b1 = backup(repo, second)
    a2 = backup(repo, first)
    assert latest_id(repo, "--source", str(first)) == a2  # not b1, which is newer than a1
    assert latest_id(repo, "--source", f"image:{second.resolve()}") == b1
    ambiguous = latest(repo)
    assert ambiguous.returncode == 3
    (line,) = ambiguous.stderr.strip().splitlines()
    assert "'latest' is ambiguous" in line and "2 sources" in line
    assert a2[:12] in line and b1[:12] in line and str(second.resolve()) in line
    assert a1[:12] not in line  # the newest of each source is named
    restore = blockvault("-r", repo, "restore", "latest", repo.parent / "target.img")
    assert restore.returncode == 3 and not (repo.parent / "target.img").exists()
    only_first = blockvault("--source", first, "-r", repo, "snapshots", "--json")
    assert [s["id"] for s in json.loads(only_first.stdout)] == [a1, a2]
    nothing = latest(repo, "--host", "no-such-host")
    assert nothing.returncode == 3 and "no snapshot matches 'latest'" in nothing.stderr


def test_another_partition_set_is_another_source(repo: Path, disks: tuple[Path, Path]) -> None:
    whole = backup(repo, disks[0])
    part = backup(repo, disks[0], "--partition", "1")
    ambiguous = latest(repo)
    assert ambiguous.returncode == 3, ambiguous.stderr
    assert f"partitions [1]: {part[:12]}" in ambiguous.stderr
    assert f"partitions [1, 2]: {whole[:12]}" in ambiguous.stderr


@needs_root
def test_latest_never_picks_another_hosts_snapshot(repo: Path, disks: tuple[Path, Path]) -> None:
    """The same disk image backed up from a second host name (its own UTS namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("missing tools: unshare")
    mine = backup(repo, disks[0])
    script = f'hostname bv-other-{os.getpid()} && exec blockvault -r "$1" backup --json "$2"'
    proc = subprocess.run(
        ["unshare", "--uts", "sh", "-c", script, "sh", str(repo), str(disks[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)["id"]
    assert latest(repo).returncode == 3
    assert latest_id(repo, "--host", os.uname().nodename) == mine
    assert latest_id(repo, "--host", f"bv-other-{os.getpid()}") == theirs
    assert latest_id(repo, "--host", f"bv-other-{os.getpid()}", "--source", str(disks[0])) == theirs


@needs_root
def test_the_same_image_through_a_loop_device_is_the_same_source(
    repo: Path, disks: tuple[Path, Path], loop: Callable[..., str]
) -> None:
    backup(repo, disks[0])
    device = loop(disks[0])
    assert source_identity(device) == f"image:{disks[0].resolve()}"
    through_loop = backup(repo, device)
    assert latest_id(repo) == through_loop
    assert latest_id(repo, "--source", device) == through_loop


def test_snapshots_without_identity_compare_by_path() -> None:
    """Format compatibility: the frozen snapshots have no source_id; a new snapshot of
    the same path is the same origin, of another path another one."""
    old = Repository.open(str(FROZEN / "plain")).snapshots()
    assert all(s.source_id == "" for s in old)
    assert old[0].same_origin(old[1])
    new = replace(old[1], source_id=f"image:{old[1].source}")
    assert new.same_origin(old[0]) and old[0].same_origin(new)
    assert not replace(new, source="/elsewhere.img").same_origin(old[0])
    assert not replace(old[1], host="another").same_origin(old[0])
    assert not replace(new, source_id="wwn:0x5000c500a1b2c3d4").same_origin(new)


def test_the_frozen_repository_still_has_one_latest(tmp_path: Path) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    assert latest_id(copy) == Repository.open(str(copy)).snapshots()[-1].id
