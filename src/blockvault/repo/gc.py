"""Garbage collection: delete the chunks and indexes no snapshot references.

Mark from every manifest, then sweep what is unreferenced, but only objects older
than the oldest live backup session's start minus a margin, and never while a backup
commits. Why that is safe beside running backups is in docs/FORMAT.md ("Concurrency
and garbage collection"); ``sessions.py`` holds the markers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from blockvault.errors import (
    IntegrityError,
    Interrupted,
    RepositoryBusy,
    RepositoryError,
    SnapshotNotFound,
)
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.repo import format as fmt
from blockvault.repo.repository import Repository
from blockvault.repo.sessions import (
    COMMITTING,
    DEFAULT_TIMING,
    SWEEPING,
    Marker,
    MarkerInfo,
    Timing,
    owners,
    read_markers,
)
from blockvault.text import command_word, plural

__all__ = ["GcResult", "collect_garbage"]

BATCH = 256  # deletions between two checks that this gc is still live


@dataclass(frozen=True)
class GcResult:
    snapshots: int  # manifests marked from
    referenced_chunks: int
    deleted_chunks: int
    deleted_bytes: int  # stored size of the deleted chunks
    deleted_indexes: int
    kept_young: int  # unreferenced objects kept because they are too new
    live_sessions: int  # backups running while this gc ran
    stale_sessions: int  # markers of dead backups (removed unless dry run)
    cutoff: float  # storage time: unreferenced objects older than this were deleted
    dry_run: bool
    seconds: float
    kept_by_session: tuple[str, ...] = field(default_factory=tuple)  # hosts of live backups
    blockers: tuple[MarkerInfo, ...] = ()  # the live backup markers that set the cutoff


class _Sweep:
    """What this gc has deleted so far (counted as deletions finish, from any thread),
    so that an interruption can say exactly that."""

    def __init__(self) -> None:
        self.deleted = 0
        self.planned = 0
        self._lock = threading.Lock()

    def done(self) -> None:
        with self._lock:
            self.deleted += 1

    def outcome(self) -> str:
        if not self.deleted:
            return "gc deleted nothing; the repository is unchanged"
        return (
            f"gc deleted {self.deleted} of {plural(self.planned, 'unreferenced object')} before it "
            "stopped; every snapshot is intact, run gc again to free the rest"
        )


def collect_garbage(
    repo: Repository,
    *,
    dry_run: bool = False,
    timing: Timing = DEFAULT_TIMING,
    reporter: Reporter = quiet_reporter,
) -> GcResult:
    """Delete every unreferenced chunk and index old enough to be safe; with
    ``dry_run`` only count them. Reports task ``gc`` in stored bytes deleted; an
    ``Interrupted`` leaves saying how much was deleted."""
    sweep = _Sweep()
    try:
        return _collect(repo, dry_run, timing, reporter, sweep)
    except Interrupted as exc:
        exc.outcome = exc.outcome or sweep.outcome()
        raise


def _collect(
    repo: Repository, dry_run: bool, timing: Timing, reporter: Reporter, sweep: _Sweep
) -> GcResult:
    started = time.monotonic()
    backend = repo.backend
    with Marker(backend, fmt.GC_DIR, "gc", timing=timing, state=SWEEPING) as flag:
        now = _quiet_moment(flag, timing)
        # Mark. Listing happens after our flag is up: no backup commits from here on.
        snapshot_ids = repo.snapshot_ids()
        referenced: set[str] = set()
        indexes: set[str] = set()
        marked = 0
        for snapshot_id in snapshot_ids:
            try:
                snapshot = repo.load_snapshot(snapshot_id)
            except SnapshotNotFound:
                continue  # pruned meanwhile: what it referenced may go
            except IntegrityError as exc:
                raise RepositoryError(
                    f"gc stopped, nothing was deleted: {exc}; "
                    f"run 'blockvault -r {command_word(repo.location)} check'",
                    repo=repo.location,
                ) from None
            try:
                index = repo.load_index(snapshot)
            except IntegrityError as exc:
                raise RepositoryError(
                    f"gc stopped, nothing was deleted: snapshot {snapshot_id[:12]}: {exc}; "
                    f"run 'blockvault -r {command_word(repo.location)} check'",
                    repo=repo.location,
                ) from None
            indexes.add(snapshot.index)
            referenced |= index.chunk_ids()
            marked += 1
        chunks = {
            name.rsplit("/", 1)[1]: (name, mtime)
            for name, mtime in backend.list_modified(fmt.DATA_DIR + "/")
        }
        index_objects = {
            name.rsplit("/", 1)[1]: (name, mtime)
            for name, mtime in backend.list_modified(fmt.INDEX_DIR + "/")
        }
        # Sessions are read after listing: a backup whose marker we do not see now
        # started after the listing, so nothing it wrote is in it.
        sessions = read_markers(backend, fmt.SESSION_DIR)
        live = [s for s in sessions if not s.stale(now, timing.session_grace)]
        stale = [s for s in sessions if s.stale(now, timing.session_grace)]
        cutoff = min([now, *(s.start for s in live)]) - timing.margin

        doomed_chunks = [
            (name, mtime)
            for chunk_id, (name, mtime) in chunks.items()
            if chunk_id not in referenced and mtime < cutoff
        ]
        doomed_indexes = [
            (name, mtime)
            for index_id, (name, mtime) in index_objects.items()
            if index_id not in indexes and mtime < cutoff
        ]
        young = sum(1 for c in chunks if c not in referenced) + sum(
            1 for i in index_objects if i not in indexes
        )
        young -= len(doomed_chunks) + len(doomed_indexes)
        sizes = _sizes(repo, [name for name, _ in doomed_chunks])
        deleted_bytes = sum(sizes.values())
        if not dry_run:
            sweep.planned = len(doomed_chunks) + len(doomed_indexes)
            reporter(TaskStarted("gc", deleted_bytes, repo.location))
            _delete(flag, [name for name, _ in doomed_chunks], sizes, reporter, sweep)
            _delete(flag, [name for name, _ in doomed_indexes], {}, reporter, sweep)
            reporter(TaskFinished("gc"))
            backend.sweep_partial(cutoff)
            for marker in stale:
                backend.delete(marker.name)
            for marker in read_markers(backend, fmt.GC_DIR):
                if marker.stale(now, timing.gc_grace):
                    backend.delete(marker.name)
    return GcResult(
        snapshots=marked,
        referenced_chunks=len(referenced),
        deleted_chunks=len(doomed_chunks),
        deleted_bytes=deleted_bytes,
        deleted_indexes=len(doomed_indexes),
        kept_young=young,
        live_sessions=len(live),
        stale_sessions=len(stale),
        cutoff=cutoff,
        dry_run=dry_run,
        seconds=round(time.monotonic() - started, 3),
        kept_by_session=tuple(sorted({s.host for s in live})),
        blockers=tuple(sorted(live, key=lambda s: s.start)),
    )


def _quiet_moment(flag: Marker, timing: Timing) -> float:
    """Wait until no live backup is committing while our flag is up; returns the
    storage's time then. If a backup commits, step aside (withdraw the flag) so that
    it can finish, and try again."""
    deadline = time.monotonic() + timing.wait
    while True:
        now = flag.now()
        committing = [
            s
            for s in read_markers(flag.backend, fmt.SESSION_DIR)
            if s.state == COMMITTING and not s.stale(now, timing.session_grace)
        ]
        if not committing:
            return now
        flag.withdraw()
        if time.monotonic() > deadline:
            raise RepositoryBusy(
                f"backups kept committing for {timing.wait:.0f}s ({owners(committing)}); "
                "gc deleted nothing. If those processes are gone, "
                f"'blockvault -r {command_word(flag.backend.location)} unlock' "
                "removes their markers",
                repo=flag.backend.location,
            )
        time.sleep(timing.poll)


def _sizes(repo: Repository, names: list[str]) -> dict[str, int]:
    """Bytes each named object takes, from one listing of data/ (a request per
    thousand objects on S3, not one per object); 0 for one gone meanwhile."""
    wanted = set(names)
    listed = {
        name: size for name, size in repo.backend.list_sizes(fmt.DATA_DIR + "/") if name in wanted
    }
    return {name: listed.get(name, 0) for name in names}


def _delete(
    flag: Marker, names: list[str], sizes: dict[str, int], reporter: Reporter, sweep: _Sweep
) -> None:
    backend = flag.backend

    def delete(name: str) -> None:
        backend.delete(name)
        sweep.done()

    pool = ThreadPoolExecutor(max(1, backend.capabilities.parallel_io))
    try:
        for start in range(0, len(names), BATCH):
            flag.check_alive()  # a gc that others gave up as stale must not delete
            batch = names[start : start + BATCH]
            list(pool.map(delete, batch))
            reporter(TaskAdvanced("gc", sum(sizes.get(name, 0) for name in batch)))
    finally:
        # on an error or interruption: what has not started does not start, what has
        # finishes, so the count the outcome gives is exact
        pool.shutdown(wait=True, cancel_futures=True)
