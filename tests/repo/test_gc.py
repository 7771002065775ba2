"""Garbage collection and its protocol with running backups, in one process: what
is deleted, what is spared and why (markers, margin, commit exclusion)."""

from __future__ import annotations

import filecmp
import os
import threading
import time
from pathlib import Path

import pytest

from blockvault.errors import RepositoryBusy, RepositoryError, SessionExpired
from blockvault.events import Event, TaskAdvanced, Warned
from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.check import check_repository
from blockvault.repo.gc import collect_garbage
from blockvault.repo.sessions import COMMITTING, SWEEPING, Marker, Timing, read_markers
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.repo.records import commit_chunks

MiB = 1024 * 1024
FAST = Timing(heartbeat=0.05, session_grace=60, gc_grace=60, margin=0, poll=0.02, wait=5)


def snapshot_of(repo: Repository, *chunks: bytes) -> Snapshot:
    return commit_chunks(repo, chunks, f"2024-01-01T00:00:{len(repo.snapshot_ids()):02d}+00:00")


def chunk(n: int) -> bytes:
    return bytes([n + 1]) * 4096


def age(repo_path: Path, seconds: float) -> None:
    """Make every object look ``seconds`` older (as if written earlier)."""
    for path in repo_path.rglob("*"):
        if path.is_file():
            st = path.stat()
            os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(str(tmp_path / "repo"), chunk_size=4096)


def test_prune_then_gc_frees_exactly_the_unshared_chunks(repo: Repository, tmp_path: Path) -> None:
    a = snapshot_of(repo, chunk(1), chunk(2))
    b = snapshot_of(repo, chunk(2), chunk(3))
    age(tmp_path / "repo", 3600)
    repo.delete_snapshot(a.id)
    dry = collect_garbage(repo, dry_run=True, timing=FAST)
    assert (dry.deleted_chunks, dry.deleted_indexes) == (1, 1)
    assert repo.stored_chunk_ids() == {repo.chunk_id(chunk(n)).hex() for n in (1, 2, 3)}
    result = collect_garbage(repo, timing=FAST)
    assert (result.deleted_chunks, result.deleted_indexes, result.snapshots) == (1, 1, 1)
    assert result.deleted_bytes > 0
    assert repo.stored_chunk_ids() == {repo.chunk_id(chunk(n)).hex() for n in (2, 3)}
    assert check_repository(repo, read_data=True).ok
    assert [s.id for s in repo.snapshots()] == [b.id]


def test_margin_keeps_young_objects(repo: Repository) -> None:
    a = snapshot_of(repo, chunk(1))
    repo.delete_snapshot(a.id)
    result = collect_garbage(repo, timing=Timing(margin=600))
    assert result.deleted_chunks == 0 and result.kept_young == 2
    assert collect_garbage(repo, timing=FAST).deleted_chunks == 1


def test_live_session_protects_what_it_wrote(repo: Repository, tmp_path: Path) -> None:
    old = snapshot_of(repo, chunk(1))
    repo.delete_snapshot(old.id)
    age(tmp_path / "repo", 3600)
    with Marker(repo.backend, fmt.SESSION_DIR, "backup", timing=FAST):
        repo.put_chunk(chunk(2))  # written by the running backup, not yet referenced
        repo.flush()  # as a running backup does every second
        result = collect_garbage(repo, timing=FAST)
        assert result.live_sessions == 1
        assert repo.stored_chunk_ids() == {repo.chunk_id(chunk(2)).hex()}  # old one went
    assert read_markers(repo.backend, fmt.SESSION_DIR) == []


def test_stale_session_is_ignored_and_removed(repo: Repository) -> None:
    repo.backend.write(f"{fmt.SESSION_DIR}/dead", b'{"kind": "backup", "state": "committing"}')
    os.utime(Path(repo.location) / fmt.SESSION_DIR / "dead", (0, time.time() - 120))
    a = snapshot_of(repo, chunk(1))
    repo.delete_snapshot(a.id)
    age(Path(repo.location), 5)  # coarse file times: the chunk might else tie with the cutoff
    result = collect_garbage(repo, timing=Timing(session_grace=60, margin=0, poll=0.01, wait=1))
    assert (result.stale_sessions, result.live_sessions, result.deleted_chunks) == (1, 0, 1)
    assert read_markers(repo.backend, fmt.SESSION_DIR) == []


def test_gc_steps_aside_while_a_backup_commits(repo: Repository) -> None:
    with Marker(repo.backend, fmt.SESSION_DIR, "backup", timing=FAST) as session:
        session.set_state(COMMITTING)
        with pytest.raises(RepositoryBusy) as busy:
            collect_garbage(repo, timing=Timing(margin=0, poll=0.01, wait=0.3))
        assert f"{session.name} by pid {os.getpid()}" in str(busy.value)
        assert f"'blockvault -r {repo.location} unlock' removes their markers" in str(busy.value)
        assert read_markers(repo.backend, fmt.GC_DIR) == []  # the flag was withdrawn


def test_commit_waits_for_a_sweeping_gc(repo: Repository) -> None:
    flag = Marker(repo.backend, fmt.GC_DIR, "gc", timing=FAST, state=SWEEPING)
    flag.__enter__()
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        released.set()
        flag.__exit__(None, None, None)

    threading.Thread(target=release).start()
    with Marker(repo.backend, fmt.SESSION_DIR, "backup", timing=FAST) as session:
        session.set_state(COMMITTING)
        session.wait_for(fmt.GC_DIR, SWEEPING, FAST.gc_grace, "a gc")
        assert released.is_set()


def test_damaged_manifest_stops_gc_before_it_deletes(repo: Repository, tmp_path: Path) -> None:
    a = snapshot_of(repo, chunk(1))
    snapshot_of(repo, chunk(2))
    path = tmp_path / "repo" / fmt.snapshot_name(a.id)
    path.write_bytes(path.read_bytes()[:-3])
    age(tmp_path / "repo", 3600)
    before = repo.stored_chunk_ids()
    with pytest.raises(RepositoryError, match="nothing was deleted"):
        collect_garbage(repo, timing=FAST)
    assert repo.stored_chunk_ids() == before


def test_silent_session_expires(repo: Repository) -> None:
    ticks = [0.0]
    with Marker(
        repo.backend,
        fmt.SESSION_DIR,
        "backup",
        timing=Timing(heartbeat=3600, session_grace=10),
        clock=lambda: ticks[0],
    ) as session:
        session.check_alive()
        ticks[0] = 6.0  # more than half the grace period without a heartbeat
        with pytest.raises(SessionExpired, match="no heartbeat"):
            session.check_alive()
        session.write()
        session.check_alive()
        ticks[0] = 30.0
        session.write()  # this heartbeat came too late: others may have given us up
        with pytest.raises(SessionExpired, match="longer than its grace"):
            session.check_alive()
    with Marker(repo.backend, fmt.SESSION_DIR, "backup", timing=FAST) as session:
        repo.backend.delete(session.name)  # a gc removed it as stale
        with pytest.raises(SessionExpired, match="lost its marker"):
            session.check_alive()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    work = tmp_path_factory.mktemp("gcdisk")
    make_tree(work / "tree", 10 * MiB, seed=11)
    return build_disk(
        DiskSpec("gpt", 40 * MiB, [PartitionSpec("ext4", 0, "root", work / "tree")]),
        work / "disk.img",
    )


def test_backup_stores_again_what_a_concurrent_gc_removed(disk: BuiltDisk, tmp_path: Path) -> None:
    """A backup deduplicates against chunks of a pruned snapshot; a gc runs while it
    does and deletes them; the backup notices at commit and stores them again."""
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=256 * 1024)
    first = backup(repo, str(disk.path))
    repo.delete_snapshot(first.id)
    age(tmp_path / "repo", 3600)
    events: list[Event] = []
    ran: list[int] = []

    def reporter(event: Event) -> None:
        events.append(event)
        if isinstance(event, TaskAdvanced) and not ran:
            ran.append(collect_garbage(repo, timing=FAST).deleted_chunks)

    second = backup(repo, str(disk.path), reporter=reporter, timing=FAST)
    assert ran and ran[0] == first.stats.new_chunks  # gc really removed them all
    warnings = [e.message for e in events if isinstance(e, Warned)]
    assert any("stored" in w and "gc removed" in w for w in warnings), warnings
    restored = tmp_path / "restored.img"
    restore(repo, second, str(restored))
    assert filecmp.cmp(restored, disk.path, shallow=False)
    assert check_repository(repo, read_data=True).ok
