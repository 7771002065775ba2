"""How each host is doing, in one word, as the dashboard shows it.

The facts (online, last good backup, overdue plans) are the fleet's
(``center.fleet.host_statuses``: the same the API reports and the alerts judge); the
dashboard adds one word per host, first match wins: ``revoked``; ``offline`` (not
online); ``failing`` (its latest finished backup failed); ``overdue``; else ``ok``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blockvault.center import fleet as facts
from blockvault.center.auth import Principal
from blockvault.center.models import Group, Host, Run

__all__ = ["STATES", "HostState", "HostStatus", "fleet"]

HostState = Literal["ok", "failing", "overdue", "offline", "revoked"]
STATES: Final[tuple[HostState, ...]] = ("ok", "failing", "overdue", "offline", "revoked")


@dataclass(frozen=True)
class HostStatus:
    host: Host
    group: str | None
    state: HostState
    last_good: datetime | None  # the center's bound on when the last good backup ended
    last_status: str | None  # the latest finished backup's status
    next_run: datetime | None
    stored_bytes: int


def _latest_status(session: Session, ids: list[int]) -> dict[int, str]:
    """Each host's latest finished backup's status, in one query."""
    finished = (Run.kind == "backup") & (Run.status != "running") & Run.host_id.in_(ids)
    newest = (
        select(Run.host_id, func.max(Run.started).label("started"))
        .where(finished)
        .group_by(Run.host_id)
        .subquery()
    )
    rows = session.execute(
        select(Run.host_id, Run.status).join(
            newest, (Run.host_id == newest.c.host_id) & (Run.started == newest.c.started)
        )
    )
    return {host_id: status for host_id, status in rows}


def fleet(
    session: Session, now: datetime, who: Principal, hosts: Iterable[int] | None = None
) -> list[HostStatus]:
    """Every host ``who`` sees (or those of ``hosts``), by name, with its state."""
    query = select(Host, Group.name).outerjoin(Group, Host.group_id == Group.id)
    if hosts is not None:
        query = query.where(Host.id.in_(list(hosts)))
    visible = [h for h, g in session.execute(query.order_by(Host.name)) if who.sees(g)]
    latest = _latest_status(session, [h.id for h in visible])
    found = []
    for status in facts.host_statuses(session, visible, now):
        host = status.host
        state: HostState
        if host.revoked is not None:
            state = "revoked"
        elif not status.online:
            state = "offline"
        elif latest.get(host.id) == "failed":
            state = "failing"
        elif status.overdue:
            state = "overdue"
        else:
            state = "ok"
        found.append(
            HostStatus(
                host,
                status.group,
                state,
                status.last_good,
                latest.get(host.id),
                status.next_run,
                status.stored_bytes,
            )
        )
    return found
