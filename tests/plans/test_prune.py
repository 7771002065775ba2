"""``prune`` on real repositories: snapshots of real disk images (sfdisk + mkfs),
pruned through the public API and the CLI.

Two different disks seen through one device path stay two groups (a read-only loop
device whose backing file is swapped for another image with LOOP_CHANGE_FD: the same
/dev/loopN, another disk). A damaged snapshot is reported and never removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

import blockvault
from blockvault.errors import ClockBehind
from blockvault.repo import format as fmt
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault as run_cli
from tests.conftest import needs_root, sh

MiB = 1 << 20
NOW = datetime(2040, 1, 1, tzinfo=UTC)  # after every snapshot made here
LOOP_CHANGE_FD = 0x4C06  # <linux/loop.h>: swap a read-only loop device's backing file


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two disks of the same size and layout (GPT + ext4) holding different files."""
    work = tmp_path_factory.mktemp("prune")
    images = []
    for n in (1, 2):
        make_tree(work / f"tree{n}", 1 * MiB, seed=n)
        spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("ext4", 0, "root", work / f"tree{n}")])
        images.append(build_disk(spec, work / f"disk{n}.img").path)
    return images[0], images[1]


@pytest.fixture
def repo(tmp_path: Path) -> blockvault.Repository:
    return blockvault.Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)


def swap_backing_file(device: str, image: Path) -> None:
    """Point the read-only loop ``device`` at ``image`` (same size), keeping its name."""
    with open(device, "rb") as dev, open(image, "rb") as new:
        fcntl.ioctl(dev.fileno(), LOOP_CHANGE_FD, new.fileno())


def scribble_boot_gap(image: Path, seed: int) -> None:
    """Change bytes in the gap between the GPT and the first partition (imaged raw),
    so that the next snapshot of the same disk has another index."""
    with open(image, "r+b") as file:
        file.seek(40 * 512)
        file.write(bytes([seed]) * 4096)


@needs_root
def test_two_disks_seen_at_one_device_path_are_pruned_apart(
    repo: blockvault.Repository, disks: tuple[Path, Path]
) -> None:
    first, second = disks
    device = sh("losetup", "--read-only", "--find", "--show", first).strip()
    try:
        a1 = blockvault.backup(repo, device)
        a2 = blockvault.backup(repo, device)
        swap_backing_file(device, second)
        b1 = blockvault.backup(repo, device)
        b2 = blockvault.backup(repo, device)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
    assert {s.source for s in (a1, a2, b1, b2)} == {device}  # one path...
    assert a1.source_id == f"image:{first.resolve()}" != b1.source_id  # ...two disks

    result = blockvault.prune(repo, blockvault.Policy(last=1), now=NOW, tz=UTC)

    assert {s.id for s in result.removed} == {a1.id, b1.id}
    assert {s.id for s in result.kept} == {a2.id, b2.id}  # each disk keeps its newest
    assert {s.id for s in repo.snapshots()} == {a2.id, b2.id}
    assert {d.group for d in result.decisions} == {
        (a1.host, a1.source_id, (1,)),
        (b1.host, b1.source_id, (1,)),
    }


def test_damaged_snapshots_are_reported_never_removed(
    repo: blockvault.Repository, disks: tuple[Path, Path], tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(disks[0].read_bytes())
    snaps = []
    for seed in (1, 2, 3):
        scribble_boot_gap(image, seed)
        snaps.append(blockvault.backup(repo, str(image)))
    oldest, middle, newest = snaps
    assert len({s.index for s in snaps}) == 3
    repo.backend.delete(fmt.index_name(middle.index))  # middle: its index is missing
    unreadable = blockvault.backup(repo, str(disks[1]))  # another disk: its own group
    repo.backend.write(fmt.snapshot_name(unreadable.id), b"not a manifest")

    dry = blockvault.prune(repo, blockvault.Policy(last=1), now=NOW, tz=UTC, dry_run=True)
    assert [s.id for s in dry.removed] == [oldest.id] and dry.dry_run
    assert len(repo.snapshot_ids()) == 4  # a dry run removes nothing

    result = blockvault.prune(repo, blockvault.Policy(last=1), now=NOW, tz=UTC)
    assert [s.id for s in result.removed] == [oldest.id]
    assert [s.id for s in result.kept] == [newest.id]
    assert set(result.damaged) == {middle.id, unreadable.id}
    assert "index" in result.damaged[middle.id] and "missing" in result.damaged[middle.id]
    assert set(repo.snapshot_ids()) == {middle.id, newest.id, unreadable.id}

    again = run_cli("-r", repo.location, "prune", "--keep-last", "1", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["removed"] == 0 and set(report["damaged"]) == {middle.id, unreadable.id}
    text = run_cli("-r", repo.location, "prune", "--keep-last", "1")
    assert f"snapshot {middle.id[:12]} is left alone: it is damaged" in text.stderr
    assert set(repo.snapshot_ids()) == {middle.id, newest.id, unreadable.id}


def test_the_global_host_narrows_prune_and_prune_host_is_its_deprecated_alias(
    repo: blockvault.Repository, disks: tuple[Path, Path]
) -> None:
    mine = os.uname().nodename
    older = blockvault.backup(repo, str(disks[0]))
    newer = blockvault.backup(repo, str(disks[0]))
    repo.selector = blockvault.Selector(host="another-host")
    assert blockvault.prune(repo, blockvault.Policy(last=1), now=NOW, tz=UTC).decisions == ()
    location = repo.location

    other = run_cli("--host", "another-host", "-r", location, "prune", "--keep-last", "1")
    assert other.returncode == 0 and "removed 0 of 0 snapshots" in other.stdout, other
    old_style = run_cli("-r", location, "prune", "--keep-last", "1", "--host", "another-host")
    assert old_style.returncode == 0 and "removed 0 of 0 snapshots" in old_style.stdout
    assert "'prune --host' is deprecated: use 'blockvault --host another-host prune" in (
        old_style.stderr
    )
    for refused in (
        run_cli("-r", location, "prune", "--keep-last", "1", "--host", mine, "--host", "b"),
        run_cli("--host", "b", "-r", location, "prune", "--keep-last", "1", "--host", mine),
    ):
        assert refused.returncode == 2, refused
        (line,) = refused.stderr.strip().splitlines()
        assert "prune considers one host" in line
    assert set(repo.snapshot_ids()) == {older.id, newer.id}

    selected = ("--host", mine, "--source", str(disks[0]))
    kept = run_cli(*selected, "-r", location, "prune", "--keep-last", "1", "--json")
    assert kept.returncode == 0, kept.stderr
    assert [(s["id"], s["action"]) for s in json.loads(kept.stdout)["snapshots"]] == [
        (newer.id, "keep"),
        (older.id, "remove"),
    ]
    assert repo.snapshot_ids() == [newer.id]


def test_a_manifest_whose_time_is_no_time_is_reported_not_judged(
    repo: blockvault.Repository, disks: tuple[Path, Path]
) -> None:
    """A hostile or damaged manifest whose time does not parse, or has no zone, must
    neither stop the prune of the others nor be removed (its age is unknown)."""
    older = blockvault.backup(repo, str(disks[0]))
    newer = blockvault.backup(repo, str(disks[0]))
    index = repo.load_index(newer)
    garbage = repo.write_snapshot(replace(newer, time="soon\x1b[2J" + "9" * 500), index)
    naive = repo.write_snapshot(replace(newer, time="2020-01-01T00:00:00"), index)

    result = blockvault.prune(repo, blockvault.Policy(last=1), now=NOW, tz=UTC)

    assert [s.id for s in result.removed] == [older.id]
    assert [s.id for s in result.kept] == [newer.id]
    assert "is not an ISO 8601 time" in result.damaged[garbage.id]
    assert "\x1b" not in result.damaged[garbage.id] and len(result.damaged[garbage.id]) < 100
    assert "has no time zone" in result.damaged[naive.id]
    assert set(repo.snapshot_ids()) == {newer.id, garbage.id, naive.id}
    shown = run_cli("-r", repo.location, "prune", "--keep-last", "1")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout + shown.stderr


def test_a_snapshot_dated_after_now_makes_prune_refuse_and_remove_nothing(
    repo: blockvault.Repository, disks: tuple[Path, Path]
) -> None:
    """A clock that jumped back makes every snapshot look younger than it is, and the
    newest ones lie "in the future": prune refuses rather than count from there. A
    future snapshot that prune would not consider (another host) does not block it."""
    older = blockvault.backup(repo, str(disks[0]))
    newer = blockvault.backup(repo, str(disks[0]))
    index = repo.load_index(newer)
    ahead = repo.write_snapshot(replace(newer, time="2040-01-02T00:00:00+00:00"), index)
    before = set(repo.snapshot_ids())

    with pytest.raises(ClockBehind, match="the clock may have jumped back") as refused:
        blockvault.prune(repo, blockvault.Policy(last=1), now=NOW, tz=UTC)
    assert ahead.id[:12] in str(refused.value)
    assert set(repo.snapshot_ids()) == before
    shown = run_cli("-r", repo.location, "prune", "--keep-last", "1")  # now: 2026
    assert shown.returncode == 2 and "nothing was pruned" in shown.stderr
    assert set(repo.snapshot_ids()) == before

    elsewhere = repo.write_snapshot(replace(ahead, host="other"), index)
    repo.delete_snapshot(ahead.id)
    repo.selector = blockvault.Selector(host=newer.host)
    result = blockvault.prune(repo, blockvault.Policy(last=1), now=NOW, tz=UTC)
    assert [s.id for s in result.removed] == [older.id]
    assert set(repo.snapshot_ids()) == {newer.id, elsewhere.id}
