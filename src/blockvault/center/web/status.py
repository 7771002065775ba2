"""How each host is doing, as the dashboard shows it, in a few queries for the whole
fleet (the overview of a thousand hosts must stay fast).

A host is, first match wins: ``revoked``; ``offline`` when the center has not heard
from it for ``offline_after`` (setting ``offline_after_minutes``, default 15);
``failing`` when its latest backup failed; ``overdue`` when its last good backup
(or, never backed up, its enrolment) is older than 1.25 times the shortest period
of the central plans it has; else ``ok``. Every time is the center's (``received``),
never the agent's claim.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blockvault.center.auth import Principal
from blockvault.center.models import CentralPlan, Group, Host, Run, Setting
from blockvault.errors import ScheduleError
from blockvault.plans.schedule import parse_schedule

__all__ = ["STATES", "HostState", "HostStatus", "fleet", "offline_after", "plan_period"]

HostState = Literal["ok", "failing", "overdue", "offline", "revoked"]
STATES: Final[tuple[HostState, ...]] = ("ok", "failing", "overdue", "offline", "revoked")
OVERDUE_FACTOR: Final = 1.25
OFFLINE_DEFAULT: Final = timedelta(minutes=15)


@dataclass(frozen=True)
class HostStatus:
    host: Host
    group: str | None
    state: HostState
    last_good: datetime | None  # when the center received the last good backup
    last_status: str | None  # the latest backup run's status


@functools.lru_cache(maxsize=1024)
def plan_period(schedule: str, window: str | None) -> timedelta | None:
    """The longest gap between runs of a schedule; None if it does not parse (the
    plan editor refuses such plans, the API may not have)."""
    try:
        return parse_schedule(schedule, window, UTC).period
    except ScheduleError:
        return None


def offline_after(session: Session) -> timedelta:
    value = session.get(Setting, "offline_after_minutes")
    minutes = value.value if value is not None else None
    if isinstance(minutes, int) and not isinstance(minutes, bool) and minutes > 0:
        return timedelta(minutes=minutes)
    return OFFLINE_DEFAULT


def _periods(session: Session) -> tuple[dict[int, timedelta], dict[int, timedelta]]:
    """The shortest plan period per host id and per group id."""
    by_host: dict[int, timedelta] = {}
    by_group: dict[int, timedelta] = {}
    for plan in session.scalars(select(CentralPlan)):
        spec = plan.spec if isinstance(plan.spec, dict) else {}
        schedule, window = spec.get("schedule"), spec.get("window")
        if spec.get("enabled") is False or not isinstance(schedule, str):
            continue
        period = plan_period(schedule, window if isinstance(window, str) else None)
        if period is None:
            continue
        for key, table in ((plan.host_id, by_host), (plan.group_id, by_group)):
            if key is not None:
                table[key] = min(period, table.get(key, period))
    return by_host, by_group


def fleet(
    session: Session, now: datetime, who: Principal, hosts: Iterable[int] | None = None
) -> list[HostStatus]:
    """Every host ``who`` sees (or those of ``hosts``), by name, with its state."""
    query = select(Host, Group.name).outerjoin(Group, Host.group_id == Group.id)
    if hosts is not None:
        query = query.where(Host.id.in_(list(hosts)))
    rows = [(h, g) for h, g in session.execute(query.order_by(Host.name)) if who.sees(g)]
    backups = Run.kind == "backup"
    last_good = dict(
        session.execute(
            select(Run.host_id, func.max(Run.received))
            .where(backups, Run.status == "ok")
            .group_by(Run.host_id)
        ).all()
    )
    newest = (
        select(Run.host_id, func.max(Run.started).label("started"))
        .where(backups, Run.status != "running")
        .group_by(Run.host_id)
        .subquery()
    )
    last_status = dict(
        session.execute(
            select(Run.host_id, Run.status).join(
                newest, (Run.host_id == newest.c.host_id) & (Run.started == newest.c.started)
            )
        ).all()
    )
    by_host, by_group = _periods(session)
    silent = offline_after(session)
    found = []
    for host, group in rows:
        good = last_good.get(host.id)
        status = last_status.get(host.id)
        periods = [p for p in (by_host.get(host.id), by_group.get(host.group_id or -1)) if p]
        state: HostState
        if host.revoked is not None:
            state = "revoked"
        elif host.last_seen is None or now - host.last_seen > silent:
            state = "offline"
        elif status == "failed":
            state = "failing"
        elif periods and now - (good or host.enrolled) > min(periods) * OVERDUE_FACTOR:
            state = "overdue"
        else:
            state = "ok"
        found.append(HostStatus(host, group, state, good, status))
    return found
