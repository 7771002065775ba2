"""Check a repository: every manifest parses, its index exists, parses and agrees
with it (``Repository.load_index`` checks that), every chunk an index names exists
with a stored size a chunk can have (from the listing, without reading it);
with ``read_data`` every chunk (or a subset) is read back and re-hashed. Damage is
reported by snapshot and region. A file snapshot's trees are walked: each must
parse, and reference only objects its index lists.

Chunks are read once however many snapshots share them; a bad chunk is then
attributed to every snapshot and region that references it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from blockvault.errors import IntegrityError, Interrupted, SnapshotNotFound, UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.repo import format as fmt
from blockvault.repo.index import Index
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository
from blockvault.repo.sessions import read_markers
from blockvault.repo.tree import TreeRefs, reachable

__all__ = ["CheckResult", "Damage", "Subset", "check_repository", "parse_subset"]


@dataclass(frozen=True)
class Damage:
    snapshot: str  # id, or "" for a problem that belongs to no snapshot
    region: str  # "manifest", "index", "boot areas" or "partition N"
    offset: int  # disk offset of the first chunk concerned (0 for objects)
    object: str  # chunk, index or snapshot id
    detail: str


@dataclass(frozen=True)
class Subset:
    """Which referenced chunks ``read_data`` reads: a random ``fraction`` (``10%``),
    or part ``n`` of ``t`` (``2/5``: the same chunks every time, all after t runs)."""

    fraction: float = 1.0
    part: tuple[int, int] | None = None
    seed: int | None = None

    def pick(self, chunk_ids: set[str]) -> list[str]:
        ordered = sorted(chunk_ids)
        if self.part is not None:
            n, t = self.part
            return [c for c in ordered if int(c[:8], 16) % t == n - 1]
        if self.fraction >= 1.0:
            return ordered
        count = round(len(ordered) * self.fraction)
        if self.fraction > 0 and ordered:
            count = max(count, 1)
        return sorted(random.Random(self.seed).sample(ordered, count))


def parse_subset(spec: str) -> Subset:
    """``10%``, ``0.5%`` or ``n/t``."""
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)%", spec.strip()):
        value = float(m.group(1))
        if 0 < value <= 100:
            return Subset(fraction=value / 100)
    if m := re.fullmatch(r"(\d+)/(\d+)", spec.strip()):
        n, t = int(m.group(1)), int(m.group(2))
        if 1 <= n <= t:
            return Subset(part=(n, t))
    raise UsageError(f"--subset {spec!r}: give a percentage (10%) or a part n/t (2/5)")


@dataclass(frozen=True)
class CheckResult:
    snapshots: int
    chunks: int  # distinct chunks referenced
    chunks_read: int  # read back and re-hashed
    bytes_read: int  # stored bytes read
    unreferenced: int  # chunks no snapshot references (freed by gc; not damage)
    live_sessions: int  # backup markers present (running, or left by a killed backup)
    seconds: float
    problems: tuple[Damage, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_snapshots(self) -> tuple[str, ...]:
        return tuple(sorted({p.snapshot for p in self.problems if p.snapshot}))


def check_repository(
    repo: Repository,
    *,
    read_data: bool = False,
    subset: Subset | None = None,
    reporter: Reporter = quiet_reporter,
) -> CheckResult:
    """Check the whole repository; with ``read_data`` it reports task ``check`` in
    plaintext bytes read (the total assumes full chunks, so it is an upper bound).
    It only reads, which an ``Interrupted`` leaving it says."""
    try:
        return _check(repo, read_data, subset, reporter)
    except Interrupted as exc:
        exc.outcome = exc.outcome or "check only reads; the repository is unchanged"
        raise


def _check(
    repo: Repository, read_data: bool, subset: Subset | None, reporter: Reporter
) -> CheckResult:
    started = time.monotonic()
    problems: list[Damage] = []
    loaded: list[tuple[Snapshot, Index]] = []
    for snapshot_id in repo.snapshot_ids():
        try:
            snap = repo.load_snapshot(snapshot_id)
        except SnapshotNotFound:
            continue  # removed while we listed
        except IntegrityError as exc:
            problems.append(Damage(snapshot_id, "manifest", 0, snapshot_id, str(exc)))
            continue
        try:
            index = repo.load_index(snap)
        except IntegrityError as exc:
            problems.append(Damage(snap.id, "index", 0, snap.index, str(exc)))
            continue
        loaded.append((snap, index))

    for name in repo.stray_snapshots():
        detail = f"{name!a} under snapshots/ is not a snapshot id; it is ignored"
        problems.append(Damage("", "manifest", 0, ascii(name), detail))
    sizes = repo.stored_chunk_sizes()
    stored = set(sizes)
    referenced: set[str] = set()
    for _, index in loaded:
        referenced |= index.chunk_ids()
    missing = referenced - stored
    bad: dict[str, str] = {c: f"chunk {c} is missing" for c in missing}
    for chunk_id in referenced - missing:  # sizes come with the listing: no reads
        if (problem := repo.stored_chunk_size_problem(sizes[chunk_id])) is not None:
            bad[chunk_id] = f"chunk {chunk_id}: {problem}"

    read = read_bytes = 0
    if read_data:
        todo = (subset or Subset()).pick(referenced - set(bad))

        def reread(chunk_id: str) -> tuple[str, int, int, str | None]:
            try:
                raw = repo.read_raw_chunk(chunk_id)
                plain = repo.decode_chunk(chunk_id, raw)
            except IntegrityError as exc:
                return chunk_id, 0, 0, str(exc)
            return chunk_id, len(raw), len(plain), None

        workers = max(2, repo.backend.capabilities.parallel_io)
        reporter(TaskStarted("check", len(todo) * repo.config.chunk_size, repo.location))
        with ThreadPoolExecutor(workers) as pool:
            for chunk_id, size, plain, error in pool.map(reread, todo, chunksize=16):
                read += 1
                read_bytes += size
                if error is not None:
                    bad[chunk_id] = error
                reporter(TaskAdvanced("check", plain))
        reporter(TaskFinished("check"))
    problems.extend(_attribute(loaded, bad))
    problems.extend(_check_trees(repo, loaded, bad))
    sessions = read_markers(repo.backend, fmt.SESSION_DIR)
    return CheckResult(
        snapshots=len(loaded) + sum(1 for p in problems if p.region == "manifest" and p.snapshot),
        chunks=len(referenced),
        chunks_read=read,
        bytes_read=read_bytes,
        unreferenced=len(stored - referenced),
        live_sessions=len(sessions),
        seconds=round(time.monotonic() - started, 3),
        problems=tuple(problems),
    )


def _attribute(loaded: list[tuple[Snapshot, Index]], bad: dict[str, str]) -> Iterator[Damage]:
    """One problem per bad chunk, snapshot and region (at the chunk's first offset)."""
    if not bad:
        return
    for snap, index in loaded:
        for region in index.regions:
            if region.kind == fmt.REGION_FILES:  # no layout: each object it keeps alive
                for raw in region.chunk_ids:
                    if (chunk_id := raw.hex()) in bad:
                        yield Damage(snap.id, region.name, 0, chunk_id, bad[chunk_id])
                continue
            seen: set[str] = set()
            for ref in region.chunks(index.chunk_size):
                if ref.chunk_id in bad and ref.chunk_id not in seen:
                    seen.add(ref.chunk_id)
                    yield Damage(
                        snap.id,
                        region.name,
                        region.start + ref.offset,
                        ref.chunk_id,
                        bad[ref.chunk_id],
                    )


def _check_trees(
    repo: Repository, loaded: list[tuple[Snapshot, Index]], bad: dict[str, str]
) -> Iterator[Damage]:
    """A file snapshot's structure: every tree object parses, and every object its trees
    reference is in its index (else gc would delete it). Each tree is read once."""
    cache: dict[str, TreeRefs] = {}
    for snap, index in loaded:
        if snap.kind != "files":
            continue
        reached, problems = reachable(snap.tree, repo.get_chunk, cache, skip=set(bad))
        for tree_id, detail in problems:
            yield Damage(snap.id, "files", 0, tree_id, detail)
        outside = sorted(reached - index.chunk_ids())
        for object_id in outside:
            detail = f"object {object_id} is referenced by a tree but not listed in the index"
            yield Damage(snap.id, "files", 0, object_id, detail)
