"""The center's maintenance role: the only one that deletes snapshots.

Agents add snapshots; the center scans each registered repository it can open
(stored and logical size, snapshot count, free space), records when it first saw
every snapshot (``SeenSnapshot.first_seen``), and runs the center's own jobs
(``host_id`` None): ``prune`` with the repository's retention policy, ``gc`` and
``check``. Retention counts from ``first_seen``, the center's time, never from the
time a manifest claims: an agent that writes an old date cannot make a fresh
snapshot of another machine look expired, nor its own.

Password custody: a repository password is stored only if an admin gives one, sealed
with AES-256-GCM under the center's 32-byte secret (``Center.secret``; the
repository's name is the associated data, so a sealed value cannot be moved to
another row). It is unsealed to open the repository here and to hand it to an agent
inside a job, over the agent's pinned TLS link.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center import jobs as queue
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import Job, Repository, SeenSnapshot
from blockvault.center.workers import Periodic
from blockvault.errors import BlockvaultError
from blockvault.plans.retention import RULES, Policy, apply_policy, parse_duration
from blockvault.repo import Repository as Repo
from blockvault.repo.check import check_repository
from blockvault.repo.gc import collect_garbage
from blockvault.repo.manifest import Snapshot

__all__ = [
    "DOWNLOAD_TTL",
    "RepositoryRefused",
    "open_repository",
    "params_for_agent",
    "parse_retention",
    "register",
    "remove_old_downloads",
    "repository_named",
    "repository_view",
    "run_center_jobs",
    "scan",
    "seal",
    "unseal",
    "worker",
]

SCAN_EVERY: Final = 300.0  # seconds between rounds (a queued center job wakes one)
DOWNLOAD_TTL: Final = timedelta(hours=24)
_log = logging.getLogger("blockvault.center")


class RepositoryRefused(ValueError):
    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


# --- sealed passwords ------------------------------------------------------------------


def seal(center: Center, name: str, password: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(center.secret).encrypt(nonce, password.encode(), name.encode())


def unseal(center: Center, name: str, sealed: bytes) -> str:
    return AESGCM(center.secret).decrypt(sealed[:12], sealed[12:], name.encode()).decode()


# --- registered repositories ------------------------------------------------------------


def parse_retention(keep: Any) -> Policy | None:
    """A retention policy from a plans-style keep table ({"daily": 7, "within": "2d"})."""
    if keep is None:
        return None
    if not isinstance(keep, dict):
        raise RepositoryRefused("retention: give a table such as {daily: 7, weekly: 4}")
    rules = {name for name, _ in RULES}
    unknown = sorted(set(keep) - rules - {"within"})
    if unknown:
        raise RepositoryRefused(
            f"retention.{unknown[0]}: the rules are {', '.join(sorted(rules))}, within"
        )
    try:
        within = keep.get("within")
        policy = Policy(
            **{k: v for k, v in keep.items() if k != "within"},
            within=None if within is None else parse_duration(str(within)),
        )
    except BlockvaultError as error:
        raise RepositoryRefused(f"retention: {error}") from None
    if policy.empty:
        raise RepositoryRefused("retention: give at least one keep rule")
    return policy


def register(
    session: Session,
    center: Center,
    name: str,
    location: str,
    password: str | None,
    retention: dict[str, Any] | None,
) -> Repository:
    parse_retention(retention)
    if session.scalar(select(Repository).where(Repository.name == name)) is not None:
        raise RepositoryRefused(f"a repository named {name} exists already", conflict=True)
    repo = Repository(
        name=name,
        location=location,
        password_sealed=None if password is None else seal(center, name, password),
        retention=retention,
    )
    session.add(repo)
    session.flush()
    return repo


def repository_named(session: Session, name: str) -> Repository:
    repo = session.scalar(select(Repository).where(Repository.name == name))
    if repo is None:
        raise queue.JobError(f"no repository named {name}: register it first")
    return repo


def repository_view(repo: Repository) -> dict[str, Any]:
    ratio = None
    if repo.stored_bytes and repo.logical_bytes is not None:
        ratio = round(repo.logical_bytes / repo.stored_bytes, 2)
    return {
        "name": repo.name,
        "location": repo.location,
        "password_stored": repo.password_sealed is not None,
        "retention": repo.retention,
        "stored_bytes": repo.stored_bytes,
        "logical_bytes": repo.logical_bytes,
        "dedup_ratio": ratio,
        "snapshot_count": repo.snapshot_count,
        "free_bytes": repo.free_bytes,
        "capacity_bytes": repo.capacity_bytes,
        "scanned": repo.scanned and repo.scanned.isoformat(),
        "last_check": repo.last_check and repo.last_check.isoformat(),
        "last_check_ok": repo.last_check_ok,
        "last_gc": repo.last_gc and repo.last_gc.isoformat(),
    }


def params_for_agent(session: Session, center: Center, params: dict[str, Any]) -> dict[str, Any]:
    """A job's parameters as its agent gets them: a registered repository's name is
    replaced by its location, with its password if the center stores one."""
    name = params.get("repo")
    repo = session.scalar(select(Repository).where(Repository.name == name)) if name else None
    if repo is None:
        return params
    out = {**params, "repo": repo.location}
    if repo.password_sealed is not None:
        out["password"] = unseal(center, repo.name, repo.password_sealed)
    return out


def open_repository(center: Center, repo: Repository) -> Repo:
    password = (
        None if repo.password_sealed is None else unseal(center, repo.name, repo.password_sealed)
    )
    return Repo.open(repo.location, passphrase=password)


# --- scanning and the center's jobs ------------------------------------------------------


def scan(center: Center, repo_id: int) -> list[Snapshot]:
    """Refresh one repository's figures and record the snapshots seen for the first
    time; returns its usable snapshots, each re-dated to when the center first saw it."""
    with center.sessions() as session:
        row = session.get(Repository, repo_id)
        assert row is not None
        opened = open_repository(center, row)
    listing = opened.listing()
    snapshots = list(listing.usable())
    stored = sum(opened.stored_chunk_sizes().values())
    usage = None
    if "://" not in row.location and Path(row.location).exists():
        usage = shutil.disk_usage(row.location)
    now = center.clock()
    redated = []
    with transaction(center.sessions) as session:
        row = session.get(Repository, repo_id)
        assert row is not None
        seen = {
            s.snapshot: s
            for s in session.scalars(
                select(SeenSnapshot).where(SeenSnapshot.repository_id == repo_id)
            )
        }
        for snap in snapshots:
            record = seen.get(snap.id)
            if record is None:
                record = SeenSnapshot(
                    repository_id=repo_id,
                    snapshot=snap.id,
                    host=snap.host[:255],
                    origin=snap.origin,
                    claimed=_claimed(snap, now),
                    first_seen=now,
                )
                session.add(record)
            redated.append(dataclasses.replace(snap, time=record.first_seen.isoformat()))
        present = {snap.id for snap in snapshots} | set(listing.damaged)
        for gone in set(seen) - present:  # pruned or deleted: nothing left to age
            session.delete(seen[gone])
        row.stored_bytes = stored
        row.logical_bytes = sum(s.stats.used_bytes for s in snapshots)
        row.snapshot_count = len(snapshots)
        row.free_bytes = usage and usage.free
        row.capacity_bytes = usage and usage.total
        row.scanned = now
    return redated


def _claimed(snap: Snapshot, now: datetime) -> datetime:
    try:
        claimed = datetime.fromisoformat(snap.time)
    except ValueError:
        return now
    return claimed if claimed.tzinfo is not None else now


def run_center_jobs(center: Center) -> None:
    """Run the queued jobs of the maintenance role, oldest first."""
    while True:
        with transaction(center.sessions) as session:
            job = session.scalar(
                select(Job)
                .where(Job.host_id.is_(None), Job.state == "queued", Job.parent_id.is_(None))
                .where(Job.kind.in_(queue.CENTER_KINDS))
                .order_by(Job.id)
                .limit(1)
            )
            if job is None:
                return
            job.state, job.started = "running", center.clock()
            job_id, kind, params = job.id, job.kind, dict(job.params)
        center.bus.publish("job", id=job_id, state="running", host_id=None)
        try:
            result, error = _run(center, kind, params), None
        except (BlockvaultError, queue.JobError) as failure:
            result, error = None, str(failure)
        with transaction(center.sessions) as session:
            job = session.get(Job, job_id)
            assert job is not None
            queue.finish(session, job, center.clock(), ok=error is None, result=result, error=error)
            state = job.state
        center.bus.publish("job", id=job_id, state=state, host_id=None)


def _run(center: Center, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    with center.sessions() as session:
        row = repository_named(session, params["repository"])
        repo_id, retention = row.id, row.retention
    if kind == "prune":
        return _prune(center, repo_id, retention, dry_run=bool(params.get("dry_run")))
    with center.sessions() as session:
        opened = open_repository(center, session.get(Repository, repo_id))  # type: ignore[arg-type]
    if kind == "gc":
        gc = collect_garbage(opened)
        _record(center, repo_id, last_gc=center.clock())
        return {"deleted_chunks": gc.deleted_chunks, "deleted_bytes": gc.deleted_bytes}
    check = check_repository(opened)
    _record(center, repo_id, last_check=center.clock(), last_check_ok=not check.problems)
    if check.problems:
        raise queue.JobError(f"check found {len(check.problems)} problems: {check.problems[0]}")
    return {"snapshots": check.snapshots, "chunks": check.chunks}


def _prune(center: Center, repo_id: int, retention: Any, *, dry_run: bool) -> dict[str, Any]:
    policy = parse_retention(retention)
    if policy is None:
        raise queue.JobError("the repository has no retention policy: nothing is pruned")
    snapshots = scan(center, repo_id)
    now = center.clock()
    decisions = apply_policy(snapshots, policy, now=now, tz=UTC)
    removed = [d.snapshot.id for d in decisions if not d.keep]
    if not dry_run:
        with center.sessions() as session:
            opened = open_repository(center, session.get(Repository, repo_id))  # type: ignore[arg-type]
        for snapshot_id in removed:
            opened.delete_snapshot(snapshot_id)
        scan(center, repo_id)
    return {
        "removed": removed,
        "kept": [d.snapshot.id for d in decisions if d.keep],
        "dry_run": dry_run,
    }


def _record(center: Center, repo_id: int, **fields: Any) -> None:
    with transaction(center.sessions) as session:
        row = session.get(Repository, repo_id)
        if row is not None:
            for key, value in fields.items():
                setattr(row, key, value)


def maintain(center: Center) -> None:
    """One round: run requested jobs, then scan every repository the center can open."""
    run_center_jobs(center)
    with center.sessions() as session:
        ids = list(session.scalars(select(Repository.id)))
    for repo_id in ids:
        try:
            scan(center, repo_id)
        except BlockvaultError as error:
            _log.warning("repository %s not scanned: %s", repo_id, error)


def worker(center: Center) -> Periodic:
    return Periodic("maintenance", SCAN_EVERY, lambda: maintain(center))


def remove_old_downloads(folder: Path, now: datetime) -> None:
    if not folder.is_dir():
        return
    cutoff = now.timestamp() - DOWNLOAD_TTL.total_seconds()
    for entry in folder.iterdir():
        if entry.is_file() and entry.stat().st_mtime < cutoff:
            entry.unlink(missing_ok=True)
