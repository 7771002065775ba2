"""How each host is doing, in one word, as the dashboard shows it.

The facts (online, last good backup, overdue plans) are the fleet's
(``center.fleet.host_statuses``: the same the API reports and the alerts judge); the
dashboard adds one word per host, first match wins: ``revoked``; ``offline`` (not
online); ``failing`` (its latest backup that ended ok or failed, failed); ``overdue``; else ``ok``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import case, func, select
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
    next_run: datetime | None
    stored_bytes: int


def _failing(session: Session, ids: list[int]) -> set[int]:
    """The hosts whose latest finished backup failed: one grouped scan, no join (the
    overview of a thousand hosts with a hundred thousand runs stays fast)."""

    def latest(status: str) -> Any:
        return func.max(case((Run.status == status, Run.started)))

    rows = session.execute(
        select(Run.host_id, latest("failed"), latest("ok"))
        .where(Run.kind == "backup", Run.host_id.in_(ids))
        .group_by(Run.host_id)
    )
    return {
        host_id
        for host_id, failed, ok in rows
        if failed is not None and (ok is None or failed > ok)
    }


def fleet(
    session: Session, now: datetime, who: Principal, hosts: Iterable[int] | None = None
) -> list[HostStatus]:
    """Every host ``who`` sees (or those of ``hosts``), by name, with its state."""
    query = select(Host, Group.name).outerjoin(Group, Host.group_id == Group.id)
    if hosts is not None:
        query = query.where(Host.id.in_(list(hosts)))
    visible = [h for h, g in session.execute(query.order_by(Host.name)) if who.sees(g)]
    failing = _failing(session, [h.id for h in visible])
    found = []
    for status in facts.host_statuses(session, visible, now):
        host = status.host
        state: HostState
        if host.revoked is not None:
            state = "revoked"
        elif not status.online:
            state = "offline"
        elif host.id in failing:
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
                status.next_run,
                status.stored_bytes,
            )
        )
    return found
