"""The center's view of its hosts: what agents report, which central plans each one
runs, and how each host stands (online, last good backup, overdue).

Times that decide anything are the center's: a host is online if the center heard
from it lately; a good backup counts from the earlier of the time the agent claims it
ended and the time the center received the report, so a forged or skewed clock can
make a host look older, never fresher than the center knows it to be.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pydantic import BaseModel, Field
from sqlalchemy import case, func, or_, select
from sqlalchemy import event as sql_event
from sqlalchemy.orm import Session

from blockvault.center.bus import Bus
from blockvault.center.link.plans import CENTRAL_PREFIX
from blockvault.center.models import CentralPlan, Group, Host, Run
from blockvault.center.settings import get_setting
from blockvault.errors import BlockvaultError, PlanError
from blockvault.plans.model import RunKind, RunStatus, Trigger
from blockvault.plans.schedule import parse_schedule
from blockvault.plans.store import plan_from_table

__all__ = [
    "CENTRAL_PREFIX",
    "MAX_INVENTORY",
    "MAX_RUNS_PER_REPORT",
    "STATES",
    "HostState",
    "HostStatus",
    "ReportedRun",
    "central_spec",
    "host_statuses",
    "offline_after",
    "plans_for",
    "plans_version",
    "publish_after_commit",
    "record_runs",
]

# a host in one word, as the dashboard shows it
HostState = Literal["ok", "failing", "overdue", "offline", "revoked"]
STATES: Final[tuple[HostState, ...]] = ("ok", "failing", "overdue", "offline", "revoked")
CHANGE_WINDOW: Final = timedelta(days=7)  # the good backups a change rate is taken over
MAX_INVENTORY: Final = 512 * 1024  # bytes of one host's inventory, as JSON
MAX_RUNS_PER_REPORT: Final = 100


class ReportedRun(BaseModel):
    """One ended run as the agent's history has it (times are the agent's claim)."""

    id: int = Field(ge=1, le=2**62)
    plan: str = Field(max_length=64)
    kind: RunKind
    trigger: Trigger
    status: RunStatus
    started: datetime
    ended: datetime | None = None
    bytes_read: int = Field(0, ge=0, le=2**62)
    bytes_new: int = Field(0, ge=0, le=2**62)
    bytes_stored: int = Field(0, ge=0, le=2**62)
    snapshot: str | None = Field(None, max_length=128)
    repo: str | None = Field(None, max_length=4096)
    error: str | None = Field(None, max_length=4096)


def offline_after(session: Session) -> timedelta:
    """How long a host may stay silent and still show online (setting
    ``offline_after``, seconds)."""
    return timedelta(seconds=get_setting(session, "offline_after"))


def central_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` if it is a valid plan table (checked exactly as the plans file is),
    else ``PlanError``."""
    plan_from_table(name, spec)
    if len(json.dumps(spec)) > 64 * 1024:
        raise PlanError("larger than 64 kB", where=f"plan {name}")
    return spec


def plans_for(session: Session, host: Host) -> list[CentralPlan]:
    """The central plans ``host`` runs: its own and its group's (its own win a name)."""
    mine = CentralPlan.host_id == host.id
    if host.group_id is not None:
        mine = or_(mine, CentralPlan.group_id == host.group_id)
    return _chosen(host, session.scalars(select(CentralPlan).where(mine)).all())


def _chosen(host: Host, plans: Iterable[CentralPlan]) -> list[CentralPlan]:
    """Of ``plans``, those of ``host`` and of its group, a host's own first by name."""
    rows = [
        p for p in plans if p.host_id == host.id or (p.group_id == host.group_id and p.group_id)
    ]
    chosen: dict[str, CentralPlan] = {}
    for row in sorted(rows, key=lambda p: (p.host_id is None, p.id)):
        chosen.setdefault(row.name, row)
    return list(chosen.values())


def plans_version(plans: Sequence[CentralPlan]) -> str:
    """Changes whenever a plan of the set is added, changed or removed."""
    text = ",".join(f"{p.id}.{p.version}" for p in sorted(plans, key=lambda p: p.id))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_runs(
    session: Session, host: Host, runs: Sequence[ReportedRun], now: datetime
) -> tuple[list[int], list[Run]]:
    """Store the runs not stored yet (the center dedups by ``(host, agent run id)``):
    the ids it now holds (the agent's acknowledgement) and the new rows."""
    ids = [r.id for r in runs]
    known = set(
        session.scalars(
            select(Run.agent_run_id).where(Run.host_id == host.id, Run.agent_run_id.in_(ids))
        )
    )
    central = {p.name: p.id for p in plans_for(session, host)}
    added = []
    for run in runs:
        if run.id in known or run.ended is None or run.status == "running":
            continue
        known.add(run.id)
        name = run.plan.removeprefix(CENTRAL_PREFIX)
        row = Run(
            host_id=host.id,
            agent_run_id=run.id,
            plan=run.plan,
            central_plan_id=central.get(name) if run.plan.startswith(CENTRAL_PREFIX) else None,
            kind=run.kind,
            trigger=run.trigger,
            status=run.status,
            started=_aware(run.started),
            ended=_aware(run.ended),
            bytes_read=run.bytes_read,
            bytes_new=run.bytes_new,
            bytes_stored=run.bytes_stored,
            snapshot=run.snapshot,
            repo=run.repo,
            error=run.error,
            received=now,
        )
        session.add(row)
        added.append(row)
    session.flush()
    return sorted(known), added


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def publish_after_commit(session: Session, bus: Bus, topic: str, **fields: Any) -> None:
    """Tell the dashboards once the change is committed (not before: a page that
    re-reads at once must see it), and never if it is rolled back."""

    def publish(_session: Session) -> None:
        bus.publish(topic, **fields)

    sql_event.listen(session, "after_commit", publish, once=True)


@dataclass(frozen=True)
class HostStatus:
    host: Host
    group: str | None
    online: bool
    last_good: datetime | None  # the center's bound on when the last good backup ended
    next_run: datetime | None  # the soonest next run the agent reported
    overdue: bool
    overdue_plans: tuple[str, ...]
    stored_bytes: int  # added to repositories by this host's backups, all told
    change_rate: float | None  # new bytes / read bytes over its recent good backups
    last_backup_failed: bool  # its latest backup that ended ok or failed, failed

    @property
    def state(self) -> HostState:
        """The one word, first match wins: revoked, offline (not online), failing (its
        latest backup that ended ok or failed, failed), overdue, else ok."""
        if self.host.revoked is not None:
            return "revoked"
        if not self.online:
            return "offline"
        if self.last_backup_failed:
            return "failing"
        return "overdue" if self.overdue else "ok"

    def document(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.host.id,
            "name": self.host.name,
            "group": self.group,
            "os": self.host.os,
            "agent_version": self.host.agent_version,
            "enrolled": self.host.enrolled,
            "revoked": self.host.revoked,
            "last_seen": self.host.last_seen,
            "online": self.online,
            "last_good_backup": self.last_good,
            "last_good_age_seconds": None
            if self.last_good is None
            else int((now - self.last_good).total_seconds()),
            "next_run": self.next_run,
            "overdue": self.overdue,
            "overdue_plans": list(self.overdue_plans),
            "stored_bytes": self.stored_bytes,
            "change_rate": self.change_rate,
        }


def _good_time() -> Any:
    """The earlier of a run's claimed end and its receipt (portable SQL)."""
    return case((Run.ended < Run.received, Run.ended), else_=Run.received)


def host_statuses(session: Session, hosts: Sequence[Host], now: datetime) -> list[HostStatus]:
    """The status of each of ``hosts``, in a fixed number of queries whatever their
    number: one grouped scan of the runs gives every figure a status needs."""
    ids = [h.id for h in hosts]
    central = list(session.scalars(select(CentralPlan)))
    figures = _run_figures(session, ids, now)
    groups = {g.id: g.name for g in session.scalars(select(Group))}
    silent = offline_after(session)
    factor = get_setting(session, "overdue_factor")
    statuses = []
    for host in hosts:
        plans = _chosen(host, central)
        mine = figures.get(host.id, _Figures())
        overdue = tuple(sorted(_overdue_plans(host, plans, mine.last_good, now, factor)))
        statuses.append(
            HostStatus(
                host=host,
                group=groups.get(host.group_id) if host.group_id is not None else None,
                online=host.last_seen is not None and now - host.last_seen <= silent,
                last_good=max(mine.last_good.values(), default=None),
                next_run=_next_run(host),
                overdue=bool(overdue),
                overdue_plans=overdue,
                stored_bytes=mine.stored,
                change_rate=mine.new / mine.read if mine.read else None,
                last_backup_failed=mine.last_backup_failed,
            )
        )
    return statuses


@dataclass
class _Figures:
    """One host's runs, summed up (``_run_figures``)."""

    last_good: dict[str, datetime] = field(default_factory=dict)  # per plan
    stored: int = 0
    new: int = 0  # bytes new and read by good backups within ``CHANGE_WINDOW``
    read: int = 0
    latest_failed: datetime | None = None  # started, of backups that ended so
    latest_ok: datetime | None = None

    @property
    def last_backup_failed(self) -> bool:
        failed, ok = self.latest_failed, self.latest_ok
        return failed is not None and (ok is None or failed > ok)


def _run_figures(session: Session, ids: Sequence[int], now: datetime) -> dict[int, _Figures]:
    """Per host: the last good backup of each plan, the bytes stored, the change rate
    (new over read bytes of its good backups received in the last ``CHANGE_WINDOW``)
    and whether its latest finished backup failed, in one scan grouped by host and plan."""
    backup = Run.kind == "backup"
    good = (Run.status == "ok") & backup
    recent = good & (Run.received > now - CHANGE_WINDOW)

    def latest(status: str) -> Any:
        return func.max(case((backup & (Run.status == status), Run.started)))

    rows = session.execute(
        select(
            Run.host_id,
            Run.plan,
            func.max(case((good, _good_time()))),
            func.sum(Run.bytes_stored),
            func.sum(case((recent, Run.bytes_new), else_=0)),
            func.sum(case((recent, Run.bytes_read), else_=0)),
            latest("failed"),
            latest("ok"),
        )
        .where(Run.host_id.in_(ids))
        .group_by(Run.host_id, Run.plan)
    )
    figures: dict[int, _Figures] = {}
    for host_id, plan, good_end, stored, new, read, failed, ok in rows:
        mine = figures.setdefault(host_id, _Figures())
        if good_end is not None:
            mine.last_good[plan] = _utc(good_end)
        mine.stored += int(stored or 0)
        mine.new, mine.read = mine.new + int(new or 0), mine.read + int(read or 0)
        mine.latest_failed = _later(mine.latest_failed, failed)
        mine.latest_ok = _later(mine.latest_ok, ok)
    return figures


def _later(one: datetime | None, other: datetime | None) -> datetime | None:
    return other if one is None else one if other is None else max(one, other)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _periods(host: Host, plans: Sequence[CentralPlan]) -> dict[str, tuple[timedelta, datetime]]:
    """Each plan the host runs: its schedule's period and since when the center has
    expected it to run (a central plan: its last change; a local plan: enrolment)."""
    periods: dict[str, tuple[timedelta, datetime]] = {}
    inventory = host.inventory or {}
    for plan in inventory.get("plans", []) if isinstance(inventory.get("plans"), list) else []:
        seconds = plan.get("period_seconds") if isinstance(plan, dict) else None
        name = plan.get("name") if isinstance(plan, dict) else None
        if isinstance(seconds, int | float) and seconds > 0 and isinstance(name, str):
            if name.startswith(CENTRAL_PREFIX) or not plan.get("enabled", True):
                continue  # central plans are judged by the center's own copy below
            periods[name] = (timedelta(seconds=seconds), host.enrolled)
    for central in plans:
        if central.spec.get("enabled", True) is False:
            continue
        try:
            period = _period(central.spec["schedule"], central.spec.get("window"))
        except (KeyError, TypeError, BlockvaultError):  # valid when stored, not now
            continue
        since = max(central.updated, host.enrolled)
        periods[CENTRAL_PREFIX + central.name] = (period, since)
    return periods


@functools.lru_cache(maxsize=1024)
def _period(schedule: str, window: str | None) -> timedelta:
    """A schedule's period (hundreds of fire times reckoned: worth remembering)."""
    return parse_schedule(schedule, window).period


def _overdue_plans(
    host: Host,
    plans: Sequence[CentralPlan],
    last_good: dict[str, datetime],
    now: datetime,
    factor: float,
) -> list[str]:
    if host.revoked is not None:
        return []
    late = []
    for name, (period, since) in _periods(host, plans).items():
        good = last_good.get(name)
        reference = good if good is not None else since
        if now - reference > period * factor:
            late.append(name)
    return late


def _next_run(host: Host) -> datetime | None:
    plans = (host.inventory or {}).get("plans")
    moments = []
    for plan in plans if isinstance(plans, list) else []:
        text = plan.get("next_run") if isinstance(plan, dict) else None
        if isinstance(text, str):
            try:
                moments.append(_aware(datetime.fromisoformat(text)))
            except ValueError:
                continue
    return min(moments) if moments else None
