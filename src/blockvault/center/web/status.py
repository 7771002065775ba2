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
from typing import Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center import fleet as facts
from blockvault.center.auth import Principal
from blockvault.center.models import Group, Host

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


def fleet(
    session: Session, now: datetime, who: Principal, hosts: Iterable[int] | None = None
) -> list[HostStatus]:
    """Every host ``who`` sees (or those of ``hosts``), by name, with its state."""
    query = select(Host, Group.name).outerjoin(Group, Host.group_id == Group.id)
    if hosts is not None:
        query = query.where(Host.id.in_(list(hosts)))
    visible = [h for h, g in session.execute(query.order_by(Host.name)) if who.sees(g)]
    found = []
    for status in facts.host_statuses(session, visible, now):
        host = status.host
        state: HostState
        if host.revoked is not None:
            state = "revoked"
        elif not status.online:
            state = "offline"
        elif status.last_backup_failed:
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
