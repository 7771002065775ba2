"""Backing up a source in use (``backup --live``, disk/live.py) on this host.

ext4 on a plain partition, loop-mounted read-write: there is no snapshot underneath,
so a backup is refused unless ``--live=unsafe-reread`` asks for a read repeated until
two passes agree. The LVM snapshot method needs device-mapper, which this host's
kernel lacks: it is tested inside a QEMU guest (tests/pipeline/test_live_guest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault import Repository, backup
from blockvault.events import Event, Noted, TaskFinished, TaskStarted, Warned
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk
from tests.conftest import blockvault as run
from tests.conftest import needs_root, sh

MiB = 1024 * 1024
pytestmark = needs_root


@pytest.fixture
def disk(tmp_path: Path) -> BuiltDisk:
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello.txt").write_text("hello\n" * 1000)
    spec = DiskSpec("gpt", 48 * MiB, [PartitionSpec("ext4", 0, "root", content)])
    return build_disk(spec, tmp_path / "disk.img")


@pytest.fixture
def in_use(
    disk: BuiltDisk, tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> Path:
    """The disk's ext4 partition mounted read-write; returns the mount point."""
    root = disk.partitions[0]
    return mounted(loop(disk.path, offset=root.offset, size=root.size), tmp_path / "mnt")


def one_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_in_use_without_a_snapshot_is_refused_naming_the_options(
    disk: BuiltDisk, in_use: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    assert run("-r", repo, "init").returncode == 0
    implied = run("-r", repo, "backup", disk.path)
    one_line(implied, 2, str(in_use), "not on an LVM logical volume", "--live=unsafe-reread")
    asked = run("-r", repo, "backup", "--live=lvm", disk.path)
    one_line(asked, 2, "not on an LVM logical volume")
    unknown = run("-r", repo, "backup", "--live=nonsense", disk.path)
    assert unknown.returncode == 2 and "unsafe-reread" in unknown.stderr  # click's usage error
    assert not Repository.open(str(repo)).snapshots()


def test_unsafe_reread_reads_again_what_changed_and_says_so(
    disk: BuiltDisk, in_use: Path, tmp_path: Path
) -> None:
    """A file written between the first pass and the re-read (deterministically: when
    the first pass reports it is done) is in the snapshot; the restored filesystem
    checks clean once its journal is replayed, as after a power cut."""
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    events: list[Event] = []
    secret = os.urandom(300 * 1024).hex()

    def reporter(event: Event) -> None:
        events.append(event)
        if event == TaskFinished("backup"):
            (in_use / "written-during.txt").write_text(secret)
            sh("sync", "-f", in_use / "written-during.txt")

    snap = backup(repo, str(disk.path), live="unsafe-reread", reporter=reporter)
    assert snap.live == "unsafe-reread" and not snap.crash_consistent
    passes = [e for e in events if isinstance(e, TaskStarted)]
    assert [e.task for e in passes] == ["backup", "reread", "reread"]  # changed, then agreed
    assert any(isinstance(e, Warned) and "again" in e.message for e in events)
    assert not any(isinstance(e, Warned) and "still changing" in e.message for e in events)

    target = tmp_path / "restored.img"
    done = run("-r", repo.location, "restore", snap.id, target)
    assert done.returncode == 0, done.stderr
    part = tmp_path / "part.img"
    root = disk.partitions[0]
    sh("dd", f"if={target}", f"of={part}", "bs=1M", f"skip={root.offset // MiB}",
       f"count={root.size // MiB}", "status=none")  # fmt: skip
    replay = subprocess.run(["e2fsck", "-fy", part], capture_output=True, text=True)
    assert replay.returncode in (0, 1), replay.stdout  # 1: the journal was replayed
    sh("e2fsck", "-fn", part)  # and then nothing is left to fix
    assert sh("debugfs", "-R", "cat /written-during.txt", part) == secret

    shown = run("-r", repo.location, "snapshots", env={"COLUMNS": "250"})
    assert "unsafe-reread" in shown.stdout, shown.stdout
    info = run("-r", repo.location, "info", snap.id)
    assert "re-read, not crash-consistent" in info.stdout, info.stdout
    listed = json.loads(run("-r", repo.location, "snapshots", "--json").stdout)
    assert [s["live"] for s in listed] == ["unsafe-reread"]


def test_a_source_not_in_use_is_read_as_before(disk: BuiltDisk, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    events: list[Event] = []
    snap = backup(repo, str(disk.path), reporter=events.append)
    assert snap.live == "" and snap.crash_consistent
    assert not any(isinstance(e, Noted | Warned) and "in use" in str(e) for e in events)
    assert b'"live"' not in snap.to_json()  # the manifest reads as before the field existed
