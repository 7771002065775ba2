"""Verify snapshots: every referenced chunk is present and hashes to its id; with a
source given, every used byte of the source equals the snapshot's. A file snapshot's
objects (trees and content, its index's files region) are each read and re-hashed;
comparing one with a source is a disk snapshot's job (``diff`` compares file trees).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from blockvault.disk.device import Device, open_device
from blockvault.errors import IntegrityError, Interrupted, UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.stages import is_zero, ordered_map, read_chunk, workers
from blockvault.repo import ChunkRef, Region, Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.index import Index

__all__ = ["Problem", "VerifyResult", "verify"]


@dataclass(frozen=True)
class Problem:
    snapshot: str
    region: str  # "boot areas" or "partition N"
    offset: int  # disk offset of the chunk (or of the first differing byte)
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    snapshots: tuple[str, ...]
    chunks: int  # distinct chunks read and re-hashed
    bytes: int  # used bytes covered
    compared: bool  # compared against a source
    seconds: float
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def _first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int:
    lo, hi = 0, min(len(a), len(b))
    while hi - lo > 4096:  # binary search on memcmp of halves
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    return next((i for i in range(lo, hi) if a[i] != b[i]), hi)


def _shared_damage(
    indexes: list[tuple[Snapshot, Index]], bad: dict[str, str], known: list[Problem]
) -> Iterator[Problem]:
    """A bad chunk damages every snapshot and region that references it, not only the
    one it was read for: one problem for each of those not reported yet."""
    reported = {(p.snapshot, p.region) for p in known}
    for snap, index in indexes:
        for region in index.regions:
            if not bad or (snap.id, region.name) in reported:
                continue
            for ref in _refs(region, index.chunk_size):
                if ref.chunk_id in bad and ref.used:
                    where = region.start + ref.offset
                    yield Problem(snap.id, region.name, where, bad[ref.chunk_id])
                    break


def _refs(region: Region, chunk_size: int) -> Iterator[ChunkRef]:
    """A region's chunks; a files region (no layout) as one reference per object, at
    offset 0 with a one-byte used map (its size is known once read)."""
    if region.kind != fmt.REGION_FILES:
        yield from region.chunks(chunk_size)
        return
    for k, raw in enumerate(region.chunk_ids):
        yield ChunkRef(k, 0, 0, raw.hex(), _OBJECT)


_OBJECT = ExtentMap.span(0, 1)


def verify(
    repo: Repository,
    snapshots: Sequence[Snapshot],
    *,
    against: str | None = None,
    reporter: Reporter = quiet_reporter,
) -> VerifyResult:
    """Check ``snapshots`` (each chunk read once); compare with ``against`` if given.
    It only reads, which an ``Interrupted`` leaving it says."""
    if against is not None and len(snapshots) != 1:
        raise UsageError("--against needs exactly one snapshot")
    if against is not None and snapshots[0].kind == "files":
        raise UsageError(
            f"snapshot {snapshots[0].id[:12]} holds files, not a disk: --against compares "
            "disks; 'blockvault diff' compares file snapshots"
        )
    started = time.monotonic()
    source: Device | None = open_device(against) if against else None
    try:
        if source is not None and source.size < snapshots[0].disk_size:
            raise UsageError(
                f"{against} has {source.size} bytes, fewer than the {snapshots[0].disk_size} "
                "bytes of the disk the snapshot was taken of, so it cannot be compared "
                "with the snapshot"
            )
        indexes: list[tuple[Snapshot, Index]] = []
        problems: list[Problem] = []
        for snap in snapshots:
            try:
                indexes.append((snap, repo.load_index(snap)))
            except IntegrityError as exc:
                problems.append(Problem(snap.id, "index", 0, str(exc)))
        seen: set[str] = set()
        bad: dict[str, str] = {}  # chunk id -> what is wrong with it

        def tasks() -> Iterator[tuple[Snapshot, Region, ChunkRef, int]]:
            for snap, index in indexes:
                for region in index.regions:
                    for ref in _refs(region, index.chunk_size):
                        if not ref.used:
                            continue
                        if source is None:
                            if ref.chunk_id is None or ref.chunk_id in seen:
                                continue
                            seen.add(ref.chunk_id)
                        yield snap, region, ref, index.chunk_size

        def check(task: tuple[Snapshot, Region, ChunkRef, int]) -> tuple[int, Problem | None]:
            snap, region, ref, _ = task
            where = region.start + ref.offset
            try:
                data = repo.get_chunk(ref.chunk_id) if ref.chunk_id else None
            except IntegrityError as exc:
                if ref.chunk_id:
                    bad[ref.chunk_id] = str(exc)
                return ref.used.total, Problem(snap.id, region.name, where, str(exc))
            if source is None:
                return len(
                    data
                ) if region.kind == fmt.REGION_FILES and data else ref.used.total, None
            mine = read_chunk(source, region.start, ref.offset, ref.length, ref.used)
            if data is None:
                if mine is None or is_zero(mine):
                    return ref.used.total, None
                data = bytes(ref.length)
            if mine is not None and mine == data:
                return ref.used.total, None
            diff = where + _first_difference(mine or bytes(ref.length), data)
            return ref.used.total, Problem(
                snap.id, region.name, diff, f"source differs from the snapshot at byte {diff}"
            )

        work = list(tasks())
        total = sum(task[2].used.total for task in work)
        reporter(TaskStarted("verify", total, ", ".join(s.id[:12] for s in snapshots)))
        chunks = covered = 0
        threads = workers(repo.backend.capabilities.parallel_io)
        with contextlib.closing(ordered_map(check, work, threads)) as results:
            for n, problem in results:
                chunks += 1
                covered += n
                if problem:
                    problems.append(problem)
                reporter(TaskAdvanced("verify", n))
        reporter(TaskFinished("verify"))
        problems.extend(_shared_damage(indexes, bad, problems))
    except Interrupted as exc:
        unchanged = f"the repository and {against} are" if against else "the repository is"
        exc.outcome = exc.outcome or f"verify only reads; {unchanged} unchanged"
        raise
    finally:
        if source is not None:
            source.close()
    return VerifyResult(
        tuple(s.id for s in snapshots),
        chunks,
        covered,
        source is not None,
        round(time.monotonic() - started, 3),
        tuple(problems),
    )
