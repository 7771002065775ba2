"""Interruptions: SIGINT, SIGTERM and SIGHUP during backup, gc and check stop cleanly
(documented exit code, one true line, no marker, no temporary file, a repository that
passes check), and a SIGKILLed backup leaves a marker that ``unlock`` removes.

The signals come from the process itself at a chosen storage call
(``$BLOCKVAULT_FAULTS``, storage/faulty.py), not after a sleep, so each test
interrupts the same phase every time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from blockvault.repo import Repository
from blockvault.repo.sessions import read_markers
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault as run
from tests.conftest import blockvault_peak, process_state

MiB = 1024 * 1024
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    work = tmp_path_factory.mktemp("interrupt")
    make_tree(work / "tree", 24 * MiB, seed=5)
    spec = DiskSpec("gpt", 64 * MiB, [PartitionSpec("ext4", 0, "root", work / "tree")])
    return build_disk(spec, work / "disk.img")


def faults(spec: str) -> dict[str, str]:
    return {"BLOCKVAULT_FAULTS": spec}


def chunk_files(repo: Path) -> set[str]:
    return {p.name for p in (repo / "data").rglob("*") if p.is_file()}


def leftovers(repo: Path) -> list[Path]:
    """Markers and temporary files: what a clean stop must not leave."""
    return [
        *(repo / "sessions").glob("*"),
        *(repo / "gc").glob("*"),
        *repo.rglob(".tmp-*"),
    ]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def new_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert run("-r", repo, "init", "--chunk-size", "64KiB").returncode == 0
    return repo


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("sig", "code"), SIGNALS, ids=lambda v: getattr(v, "name", str(v)))
def test_signal_during_backup(
    sig: signal.Signals, code: int, disk: BuiltDisk, tmp_path: Path
) -> None:
    repo = new_repo(tmp_path)
    name = sig.name.removeprefix("SIG")
    proc = run("-r", repo, "backup", disk.path, env=faults(f"signal={name},every=30,under=data/"))
    assert proc.returncode == code, proc.stderr
    line = one_line(proc.stderr)
    stored = re.fullmatch(
        rf"blockvault: interrupted by {sig.name}: no snapshot was written; (\d+) chunks "
        r"\([\d.]+ MiB\) were stored and will be reused by the next backup or removed by gc",
        line,
    )
    assert stored, line
    assert int(stored[1]) == len(chunk_files(repo)) >= 30  # the line counts what is there
    assert proc.stdout == ""
    assert leftovers(repo) == []
    assert not list((repo / "snapshots").glob("*"))
    assert run("-r", repo, "check", "--read-data").returncode == 0
    # the next backup reuses every stored chunk and restores the disk byte for byte
    rerun = run("-r", repo, "backup", disk.path, "--json")
    assert rerun.returncode == 0, rerun.stderr
    stats = json.loads(rerun.stdout)["stats"]
    assert len(chunk_files(repo)) == int(stored[1]) + stats["new_chunks"]
    target = tmp_path / "restored.img"
    assert run("-r", repo, "restore", "latest", target).returncode == 0
    assert sha(target) == sha(disk.path)


def test_signal_during_commit_waits_for_the_manifest(disk: BuiltDisk, tmp_path: Path) -> None:
    """A signal while the manifest is written is raised after it: the snapshot is
    whole, and the line says it exists."""
    repo = new_repo(tmp_path)
    proc = run("-r", repo, "backup", disk.path, env=faults("signal=TERM,every=1,under=snapshots/"))
    assert proc.returncode == 143
    snapshots = [p.name for p in (repo / "snapshots").glob("*")]
    assert len(snapshots) == 1
    assert one_line(proc.stderr) == (
        f"blockvault: interrupted by SIGTERM: snapshot {snapshots[0][:12]} was written "
        "before it stopped"
    )
    assert leftovers(repo) == []
    assert run("-r", repo, "check", "--read-data").returncode == 0


def test_completed_backup_leaves_nothing_behind(disk: BuiltDisk, tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    proc = run("-r", repo, "backup", disk.path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr  # no chunk was taken for removed by a gc
    assert leftovers(repo) == []
    stats = json.loads(proc.stdout)["stats"]
    assert len(chunk_files(repo)) == stats["new_chunks"]


def test_signal_during_gc_says_how_much_it_deleted(disk: BuiltDisk, tmp_path: Path) -> None:
    make_tree(tmp_path / "other", 8 * MiB, seed=6)
    spec = DiskSpec("gpt", 32 * MiB, [PartitionSpec("ext4", 0, "root", tmp_path / "other")])
    other = build_disk(spec, tmp_path / "other.img")
    repo = new_repo(tmp_path)
    assert run("-r", repo, "backup", disk.path).returncode == 0
    dropped = run("-r", repo, "backup", other.path)
    assert dropped.returncode == 0
    (repo / "snapshots" / dropped.stdout.strip()).unlink()  # its chunks are garbage now
    before = chunk_files(repo)
    proc = run(
        "-r", repo, "gc", "--margin", "0", env=faults("signal=INT,every=5,operations=delete")
    )
    assert proc.returncode == 130, proc.stderr
    done = re.fullmatch(
        r"blockvault: interrupted by SIGINT: gc deleted (\d+) of (\d+) unreferenced objects "
        r"before it stopped; every snapshot is intact, run gc again to free the rest",
        one_line(proc.stderr),
    )
    assert done, proc.stderr
    assert int(done[1]) == len(before - chunk_files(repo)) >= 5
    assert leftovers(repo) == []
    assert run("-r", repo, "check", "--read-data").returncode == 0
    assert run("-r", repo, "gc", "--margin", "0").returncode == 0
    assert len(before - chunk_files(repo)) == int(done[2]) - 1  # the rest, less one index


def test_signal_during_check(disk: BuiltDisk, tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    assert run("-r", repo, "backup", disk.path).returncode == 0
    proc = run(
        "-r",
        repo,
        "check",
        "--read-data",
        env=faults("signal=HUP,every=10,operations=read,under=data/"),
    )
    assert proc.returncode == 129
    assert one_line(proc.stderr) == (
        "blockvault: interrupted by SIGHUP: check only reads; the repository is unchanged"
    )
    assert leftovers(repo) == []


def test_killed_backup_leaves_a_marker_that_unlock_removes(disk: BuiltDisk, tmp_path: Path) -> None:
    """SIGSTOP at a known chunk (the process is frozen mid-backup), then SIGKILL: no
    cleanup runs. ``unlock`` keeps the marker while the process lives, removes it once
    it is dead, and gc then frees what the dead backup stored."""
    repo = new_repo(tmp_path)
    backup = subprocess.Popen(
        ["blockvault", "-r", str(repo), "backup", str(disk.path)],
        env={**os.environ, **faults("signal=STOP,every=20,under=data/")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while process_state(backup.pid) != "T":  # stopped by its own SIGSTOP
            assert time.monotonic() < deadline and backup.poll() is None
            time.sleep(0.05)
        markers = list((repo / "sessions").glob("*"))
        assert len(markers) == 1
        alive = run("-r", repo, "unlock")
        assert alive.returncode == 0
        assert (
            f"kept backup marker sessions/{markers[0].name}: process {backup.pid}" in alive.stdout
        )
        blocked = run("-r", repo, "gc", "--margin", "0")
        assert f"kept back by backup marker sessions/{markers[0].name}" in blocked.stdout
        assert f"'blockvault -r {repo} unlock' removes the marker" in blocked.stdout
    finally:
        backup.kill()
        backup.wait()
    assert markers[0].exists()  # nobody cleaned up
    dry = run("-r", repo, "unlock", "--dry-run")
    assert f"would remove backup marker sessions/{markers[0].name}" in dry.stdout
    assert markers[0].exists()
    gone = run("-r", repo, "unlock")
    assert gone.stdout.strip() == (
        f"removed backup marker sessions/{markers[0].name}: process {backup.pid} on "
        f"{socket.gethostname()} is gone"
    )
    assert not markers[0].exists()
    assert chunk_files(repo)
    assert run("-r", repo, "gc", "--margin", "0").returncode == 0
    assert chunk_files(repo) == set() and list(repo.rglob(".tmp-*")) == []


def test_unlock_older_than_for_markers_of_other_machines(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    (repo / "sessions").mkdir(exist_ok=True)
    marker = repo / "sessions" / "elsewhere"
    body = {"kind": "backup", "host": "another-host", "machine": "x", "boot": "y", "pid": 1}
    marker.write_text(json.dumps(body))
    hour_ago = time.time() - 3600
    os.utime(marker, (hour_ago, hour_ago))
    kept = run("-r", repo, "unlock")
    assert "kept backup marker sessions/elsewhere: written on another-host" in kept.stdout
    assert "pass --older-than" in kept.stdout
    assert run("-r", repo, "unlock", "--older-than", "2h").stdout.startswith("kept")
    assert marker.exists()
    removed = run("-r", repo, "unlock", "--older-than", "30m")
    assert removed.stdout.startswith("removed backup marker sessions/elsewhere: silent for 3")
    assert not marker.exists()
    assert leftovers(repo) == []


def test_unlock_never_asks_for_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Markers are plaintext: unlock opens an encrypted repository without its key."""
    repo = tmp_path / "repo"
    made = run("-r", repo, "init", "--encryption", "repokey", env={"BLOCKVAULT_PASSWORD": "pw"})
    assert made.returncode == 0, made.stderr
    monkeypatch.delenv("BLOCKVAULT_PASSWORD", raising=False)
    assert run("-r", repo, "snapshots").returncode == 2  # the key is needed there
    marker = repo / "sessions" / "elsewhere"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(json.dumps({"kind": "backup", "host": "another-host", "pid": 1}))
    hour_ago = time.time() - 3600
    os.utime(marker, (hour_ago, hour_ago))
    removed = run("-r", repo, "unlock", "--older-than", "30m")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("removed backup marker sessions/elsewhere: silent for 3")
    assert leftovers(repo) == []
    nothing = run("-r", tmp_path / "nothing", "unlock")
    assert nothing.returncode == 3
    assert one_line(nothing.stderr).startswith(f"blockvault: error: no repository at {tmp_path}")


def test_a_hostile_marker_is_not_read(tmp_path: Path) -> None:
    """A marker of a gigabyte (sparse: it costs no disk) is never read, only named:
    the storage's bounded read refuses it from its size, so no command's memory grows
    by it, and unlock still works. Until it is silent past --older-than it counts as
    running; then unlock removes it."""
    repo = new_repo(tmp_path)
    (repo / "sessions").mkdir(exist_ok=True)
    big = repo / "sessions" / "big"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    kept, peak_kib = blockvault_peak("-r", repo, "unlock")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == (
        "kept unknown marker sessions/big: 1073741824 bytes, more than the 4096 a marker "
        "may have; not read; it counts as running until silent for its grace period, or "
        "pass --older-than\n"
    )
    blocked = run("-r", repo, "gc")
    assert blocked.returncode == 0, blocked.stderr
    assert "kept back by backup marker sessions/big" in blocked.stdout
    hour_ago = time.time() - 3600
    os.utime(big, (hour_ago, hour_ago))
    removed = run("-r", repo, "unlock", "--older-than", "30m")
    assert removed.stdout.startswith("removed unknown marker sessions/big: silent for 3")
    assert leftovers(repo) == []
    assert peak_kib < 512 * 1024  # KiB: nowhere near the marker's gigabyte


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "backup", "pid": "abc", "pid_start": 1e400, "start": Infinity}',
        b'{"kind": "backup\\u001b[2J", "host": "\\u001b]0;owned\\u0007", "pid": [1]}',
        b"[1, 2, 3]",
        b"\xff\xfe not text",
    ],
    ids=["numbers", "escapes", "not-an-object", "not-utf8"],
)
def test_malformed_markers_read_as_unknown_running_ones(tmp_path: Path, body: bytes) -> None:
    """Field values of the wrong type or out of range are unknown, never a traceback,
    a terminal escape or a start time the storage clock cannot have given (gc's
    cutoff rests on it)."""
    location = tmp_path / "repo"
    repo = Repository.init(str(location))
    repo.backend.write("sessions/odd", body)
    (marker,) = read_markers(repo.backend, "sessions")
    assert marker.start == marker.heartbeat == repo.backend.modified("sessions/odd")
    assert (marker.pid, marker.pid_start, marker.host, marker.state) == (0, 0, "", "running")
    assert marker.kind in ("backup", "")
    shown = run("-r", location, "unlock")
    assert shown.returncode == 0 and "\x1b" not in shown.stdout, shown
    assert shown.stdout.startswith("kept ")
