"""The center's job queue: remote operations as rows, never work inside a request.

A user (or the maintenance worker) queues a job; the host's agent takes it with a
long poll (``Doorbell`` wakes the poll when a job is queued), runs it in the
background, and posts progress, log lines and a result. States:
``queued -> running -> done | failed | cancelled``. A running job whose host stops
heart-beating for longer than the offline limit (``fleet.offline_after``) fails, with
a message saying so.
Jobs with ``host_id`` None are the center's own (prune, gc, check of a repository):
only the maintenance role deletes, so no agent is ever handed a kind that does.

Every change publishes ``("job", id=..., state=...)`` on the bus after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from blockvault.center.fleet import offline_after
from blockvault.center.models import Host, Job, JobLog
from blockvault.deploy.auth import new_code, parse_code
from blockvault.errors import BlockvaultError
from blockvault.rescue.wol import parse_mac

__all__ = [
    "AGENT_KINDS",
    "CENTER_KINDS",
    "DONE_STATES",
    "LOG_LIMIT",
    "Doorbell",
    "JobError",
    "add_log",
    "cancel",
    "claim",
    "deploy",
    "fail_offline",
    "finish",
    "queue",
    "report_progress",
    "validate",
]

LOG_LIMIT: Final = 10_000  # lines kept per job; older ones go
MESSAGE_LIMIT: Final = 4096  # characters of one log line, progress message or error
RESULT_LIMIT: Final = 256 * 1024  # characters of a job's result as JSON
DONE_STATES: Final = frozenset({"done", "failed", "cancelled"})
_TEXT_LIMIT: Final = 4096
PXE_MACS_MAX: Final = 256  # machines one bare-metal deployment boots
_DEVICE: Final = re.compile(r"/dev/[A-Za-z0-9._/-]{1,200}")


class JobError(ValueError):
    """A job request the center refuses; the message says why (HTTP 422 or 409)."""


# --- kinds and their parameters --------------------------------------------------------


def _text(params: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > _TEXT_LIMIT or "\0" in value:
        raise JobError(f"{key}: give a non-empty text of at most {_TEXT_LIMIT} characters")
    return value


def _int(params: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise JobError(f"{key}: give a whole number from {low} to {high}")
    return value


def _device(params: Mapping[str, Any], key: str) -> str:
    value = _text(params, key)
    assert value is not None
    if not _DEVICE.fullmatch(value) or ".." in value.split("/"):
        raise JobError(f"{key} {value!r}: give a device path under /dev")
    return value


def _absolute(params: Mapping[str, Any], key: str) -> str:
    value = _text(params, key)
    assert value is not None
    if (
        not value.startswith("/")
        or posixpath.normpath(value) != value.rstrip("/")
        or (value != "/" and value.endswith("/"))
    ):
        raise JobError(f"{key} {value!r}: give an absolute, normalised path")
    return value


def _snapshot_path(params: Mapping[str, Any]) -> dict[str, Any]:
    path = _text(params, "path", required=False) or ""
    return {
        "repo": _text(params, "repo"),
        "snapshot": _text(params, "snapshot"),
        "path": path,
    }


def _restore_disk(params: Mapping[str, Any]) -> dict[str, Any]:
    target = _device(params, "target")
    if params.get("confirm") != posixpath.basename(target):
        raise JobError(
            f"restore onto {target} overwrites it: type its name "
            f"({posixpath.basename(target)!r}) as confirm"
        )
    out: dict[str, Any] = {
        "repo": _text(params, "repo"),
        "snapshot": _text(params, "snapshot"),
        "target": target,
        "confirm": params["confirm"],
    }
    if params.get("partition") is not None:
        out["partition"] = _int(params, "partition", 1, 1, 128)
    return out


def _code(params: Mapping[str, Any]) -> str:
    try:
        return parse_code(str(params.get("code", "")))
    except BlockvaultError as error:
        raise JobError(f"code: {error}") from None


def _cast_receive(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "disk": _device(params, "disk"),
        "session": _text(params, "session"),
        "code": _code(params),
    }


def _pxe_deploy(params: Mapping[str, Any]) -> dict[str, Any]:
    """Bare metal: the machines are named by MAC (they have no agent), the agent runs
    ``pxe serve`` on ``interface`` with the rescue ISO at ``iso`` and sends the cast."""
    macs = params.get("macs")
    if not isinstance(macs, list) or not 1 <= len(macs) <= PXE_MACS_MAX:
        raise JobError(f"macs: give 1 to {PXE_MACS_MAX} MAC addresses")
    try:
        parsed = [parse_mac(str(mac)) for mac in macs]
    except BlockvaultError as error:
        raise JobError(f"macs: {error}") from None
    if len(set(parsed)) != len(parsed):
        raise JobError("macs: name each machine once")
    interface = _text(params, "interface")
    assert interface is not None
    if len(interface) > 15 or not interface.isprintable() or "/" in interface or " " in interface:
        raise JobError(f"interface {interface!r}: give a network interface name")
    out = {
        "repo": _text(params, "repo"),
        "snapshot": _text(params, "snapshot"),
        "session": _text(params, "session"),
        "code": _code(params),
        "macs": parsed,
        "interface": interface,
        "iso": _absolute(params, "iso"),
    }
    if params.get("target") is not None:
        out["target"] = _device(params, "target")
    return out


_AGENT_VALIDATORS: Final[dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "run-plan": lambda p: {"plan": _text(p, "plan")},
    "restore-disk": _restore_disk,
    "restore-files": lambda p: {**_snapshot_path(p), "destination": _absolute(p, "destination")},
    "browse": lambda p: {
        **_snapshot_path(p),
        "page": _int(p, "page", 0, 0, 1_000_000),
        "page_size": _int(p, "page_size", 100, 1, 500),  # a page fits a result body
    },
    "download": lambda p: {**_snapshot_path(p), "path": _text(p, "path")},
    "verify": lambda p: {
        "repo": _text(p, "repo"),
        "snapshot": _text(p, "snapshot", required=False),
    },
    "check": lambda p: {"repo": _text(p, "repo"), "read_data": bool(p.get("read_data", False))},
    "cast-receive": _cast_receive,
    "pxe-deploy": _pxe_deploy,
    "cast-send": lambda p: {
        "repo": _text(p, "repo"),
        "snapshot": _text(p, "snapshot"),
        "session": _text(p, "session"),
        "code": _code(p),
        "receivers": _int(p, "receivers", 1, 1, 10_000),
    },
}
AGENT_KINDS: Final = frozenset(_AGENT_VALIDATORS)
# the maintenance role's kinds: they may delete, so they never go to an agent
CENTER_KINDS: Final = frozenset({"prune", "gc", "check"})


def validate(kind: str, params: Any, *, on_host: bool) -> dict[str, Any]:
    """The job's parameters, checked and reduced to what its kind takes."""
    if not isinstance(params, dict):
        raise JobError("params: give an object")
    if on_host:
        if kind not in AGENT_KINDS:
            if kind in CENTER_KINDS or kind in {"forget", "delete"}:
                raise JobError(
                    f"kind {kind!r} deletes snapshots: only the center's maintenance role "
                    "runs it (queue it for a repository, without a host)"
                )
            raise JobError(f"kind {kind!r}: give one of {', '.join(sorted(AGENT_KINDS))}")
        return _AGENT_VALIDATORS[kind](params)
    if kind not in CENTER_KINDS:
        raise JobError(
            f"kind {kind!r} without a host: give one of {', '.join(sorted(CENTER_KINDS))}"
        )
    return {
        "repository": _text(params, "repository"),
        **{k: v for k, v in params.items() if k == "dry_run" and isinstance(v, bool)},
    }


# --- the queue -------------------------------------------------------------------------


class Doorbell:
    """Wakes the agents' long polls when a job is queued for their host. ``ring`` may
    be called from any thread; ``wait`` runs on the server's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def ring(self, host_id: int) -> None:
        with self._lock:
            waiters = self._waiting.pop(host_id, [])
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    async def wait(self, host_id: int, timeout: float) -> None:
        """Return when rung for ``host_id`` or after ``timeout`` seconds."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(host_id, []).append(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry[1].wait(), timeout)
        finally:
            with self._lock:
                waiters = self._waiting.get(host_id, [])
                if entry in waiters:
                    waiters.remove(entry)
                if not waiters:
                    self._waiting.pop(host_id, None)


def queue(
    session: Session,
    kind: str,
    host: Host | None,
    params: dict[str, Any],
    actor: str,
    now: datetime,
    parent: Job | None = None,
) -> Job:
    """A new queued job (``params`` already validated); flushed, so it has an id."""
    job = Job(
        kind=kind,
        host_id=None if host is None else host.id,
        parent_id=None if parent is None else parent.id,
        params=params,
        created=now,
        created_by=actor,
    )
    session.add(job)
    session.flush()
    return job


def deploy(
    session: Session,
    repo: str,
    snapshot: str,
    targets: Sequence[tuple[Host, str]],
    sender: Host,
    actor: str,
    now: datetime,
    wake: Callable[[Sequence[Host]], None] = lambda hosts: None,
) -> Job:
    """A multicast deployment: a parent job (the center's, never run by a worker) and
    one ``cast-receive`` per (host, disk) plus one ``cast-send`` on ``sender``, all
    sharing a fresh session name and code. The parent ends when its last child does.
    ``wake`` is where powered-off hosts would be woken (by PXE, issue 20) first."""
    common = _new_session()
    session_name = common["session"]
    params = {"repo": repo, "snapshot": snapshot, "session": session_name}
    params["hosts"] = [{"host": h.name, "disk": d} for h, d in targets]  # type: ignore[assignment]
    parent = queue(session, "deploy", None, {**params, "sender": sender.name}, actor, now)
    parent.state, parent.started = "running", now
    for host, disk in targets:
        child = validate("cast-receive", {**common, "disk": disk}, on_host=True)
        queue(session, "cast-receive", host, child, actor, now, parent)
    send = {**common, "repo": repo, "snapshot": snapshot, "receivers": len(targets)}
    queue(
        session, "cast-send", sender, validate("cast-send", send, on_host=True), actor, now, parent
    )
    parent.progress = {"done": 0, "total": len(targets) + 1, "message": "queued"}
    wake([h for h, _ in targets])
    return parent


def _new_session() -> dict[str, str]:
    """A fresh cast session name and code: each deployment its own (and its own data
    group, see docs/CAST.md)."""
    return {"session": f"deploy-{secrets.token_hex(4)}", "code": new_code()}


def deploy_bare_metal(
    session: Session,
    params: Mapping[str, Any],
    server: Host,
    actor: str,
    now: datetime,
) -> Job:
    """A deployment to machines without an OS, named by MAC: one ``pxe-deploy`` job on
    ``server``, the agent that boots them (``pxe serve``, Wake-on-LAN) and sends the
    cast; its progress counts the machines that finished."""
    checked = validate("pxe-deploy", {**params, **_new_session()}, on_host=True)
    job = queue(session, "pxe-deploy", server, checked, actor, now)
    job.progress = {"done": 0, "total": len(checked["macs"]), "message": "queued"}
    return job


def claim(session: Session, host_id: int, now: datetime, limit: int = 8) -> list[Job]:
    """The host's queued jobs, oldest first, marked running."""
    jobs = list(
        session.scalars(
            select(Job)
            .where(Job.host_id == host_id, Job.state == "queued")
            .where(Job.kind.in_(AGENT_KINDS))
            .order_by(Job.id)
            .limit(limit)
            .with_for_update()
        )
    )
    for job in jobs:
        job.state, job.started = "running", now
    return jobs


def _clip(text: str) -> str:
    return text[:MESSAGE_LIMIT]


def report_progress(job: Job, done: int, total: int, message: str) -> None:
    if job.state == "running":
        job.progress = {"done": done, "total": total, "message": _clip(message)}


def add_log(session: Session, job: Job, level: str, message: str, now: datetime) -> None:
    """One log line; the job keeps its newest ``LOG_LIMIT`` lines."""
    if level not in {"info", "warning", "error"}:
        raise JobError("level: give info, warning or error")
    session.add(JobLog(job_id=job.id, at=now, level=level, message=_clip(message)))
    count = session.scalar(select(func.count()).where(JobLog.job_id == job.id)) or 0
    if count > LOG_LIMIT:
        oldest = select(JobLog.id).where(JobLog.job_id == job.id).order_by(JobLog.id)
        cut = session.scalars(oldest.limit(count - LOG_LIMIT)).all()
        session.execute(delete(JobLog).where(JobLog.id.in_(cut)))


def finish(
    session: Session,
    job: Job,
    now: datetime,
    *,
    ok: bool,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """The job ends (a cancelled job stays cancelled); its parent ends with its last child."""
    if job.state in DONE_STATES:
        return
    job.state, job.ended = ("done" if ok else "failed"), now
    job.result = result if ok else None
    job.error = None if ok else _clip(error or "the job failed (no reason given)")
    if job.parent_id is not None:
        _settle_parent(session, job.parent_id, now)


def cancel(session: Session, job: Job, now: datetime) -> None:
    """Stop a job: a queued one never starts; a running one's agent learns it at its
    next progress report and stops the operation."""
    if job.state in DONE_STATES:
        raise JobError(f"job {job.id} already ended ({job.state})")
    job.state, job.ended, job.error = "cancelled", now, "cancelled by a user"
    for child in session.scalars(select(Job).where(Job.parent_id == job.id)):
        if child.state not in DONE_STATES:
            child.state, child.ended, child.error = "cancelled", now, "its parent was cancelled"
    if job.parent_id is not None:
        _settle_parent(session, job.parent_id, now)


def _settle_parent(session: Session, parent_id: int, now: datetime) -> None:
    parent = session.get(Job, parent_id)
    if parent is None or parent.state in DONE_STATES:
        return
    children = list(session.scalars(select(Job).where(Job.parent_id == parent_id)))
    open_children = [c for c in children if c.state not in DONE_STATES]
    parent.progress = {
        "done": len(children) - len(open_children),
        "total": len(children),
        "message": f"{len(children) - len(open_children)} of {len(children)} ended",
    }
    if open_children:
        return
    failed = [c for c in children if c.state != "done"]
    parent.state, parent.ended = ("failed" if failed else "done"), now
    if failed:
        parent.error = f"{len(failed)} of {len(children)} jobs did not succeed: " + ", ".join(
            f"#{c.id} {c.state}" for c in failed
        )


def fail_offline(session: Session, now: datetime) -> list[Job]:
    """Fail the running jobs of hosts that stopped heart-beating (the dashboard's
    offline limit: their outcome is unknown, and nobody is waiting for it)."""
    limit = offline_after(session)
    failed = []
    running = session.execute(
        select(Job, Host).join(Host, Job.host_id == Host.id).where(Job.state == "running")
    )
    for job, host in running:
        seen = host.last_seen or job.started or job.created
        if now - seen > limit:
            finish(
                session,
                job,
                now,
                ok=False,
                error=f"host {host.name} stopped heart-beating at "
                f"{seen.isoformat(timespec='seconds')}: the job's outcome is unknown",
            )
            failed.append(job)
    return failed
