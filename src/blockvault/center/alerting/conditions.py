"""Finding what is wrong, and keeping one open alert per condition.

Each round (``evaluate``) asks the tables what is wrong *now* and compares it with the
open alerts: a condition without an open alert opens one (and queues one message to
each target its rules route it to); an open alert whose condition is gone is closed
(and the targets that heard of it hear it recovered). A condition that lasts many
rounds is one alert and one message, however often it is found.

Every time compared is the center's (``Center.clock``, ``runs.received``,
``hosts.last_seen``): an agent's clock may be wrong or forged. Offline and overdue are
decided by ``fleet.host_statuses``, the same code that shows a host's status on the
dashboard and in the API (so an alert and the host list never disagree): a run's
claimed end is believed only where it makes a backup *older*, so neither a fast clock
nor a late report hides an overdue host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blockvault.center.alerting.config import EventKind
from blockvault.center.context import Center
from blockvault.center.fleet import host_statuses, offline_after
from blockvault.center.models import (
    Alert,
    AlertDelivery,
    AlertRule,
    AlertTarget,
    Host,
    Repository,
    Run,
)
from blockvault.center.settings import get_setting
from blockvault.text import shown

__all__ = ["Finding", "evaluate", "findings"]

_log = logging.getLogger("blockvault.center.alerts")

# judged only once the center has been up for the offline limit (see evaluate)
SETTLING_EVENTS: Final[frozenset[EventKind]] = frozenset({"host-offline", "host-overdue"})


@dataclass(frozen=True)
class Finding:
    condition: str  # the key: one open alert per key
    event: EventKind
    host_id: int | None
    message: str


def evaluate(center: Center, awake_since: datetime | None = None) -> list[tuple[int, str]]:
    """One round: open alerts for new conditions, close those that recovered; returns
    ``(alert id, "open" | "closed")`` for each change (also published on the bus).

    ``awake_since``: when this center process started. For the offline limit after
    that, hosts are not judged offline or overdue (their alerts neither open nor
    close): while the center was down no agent could report, and a fleet must get
    the time to reconnect and send its backlog before anyone is told it is silent."""
    now = center.clock()
    changes: list[tuple[int, str, str, int | None]] = []
    with center.sessions() as session, session.begin():
        settling = awake_since is not None and now - awake_since < offline_after(session)
        unjudged = SETTLING_EVENTS if settling else frozenset()
        found = {f.condition: f for f in findings(session, now, unjudged)}
        open_alerts = {
            alert.condition: alert
            for alert in session.scalars(select(Alert).where(Alert.closed.is_(None)))
            if alert.event not in unjudged
        }
        for key, finding in found.items():
            if key not in open_alerts:
                alert = _open(session, finding, now)
                changes.append((alert.id, "open", alert.event, alert.host_id))
        for key, alert in open_alerts.items():
            if key not in found:
                _close(session, alert, now)
                changes.append((alert.id, "closed", alert.event, alert.host_id))
    for alert_id, state, event, host_id in changes:
        center.bus.publish("alert", id=alert_id, state=state, event=event, host_id=host_id)
    return [(alert_id, state) for alert_id, state, _, _ in changes]


def _open(session: Session, finding: Finding, now: datetime) -> Alert:
    alert = Alert(
        condition=finding.condition,
        event=finding.event,
        host_id=finding.host_id,
        message=finding.message,
        opened=now,
    )
    session.add(alert)
    session.flush()
    group_id = None
    if finding.host_id is not None:
        host = session.get(Host, finding.host_id)
        group_id = host.group_id if host is not None else None
    targets = session.scalars(
        select(AlertTarget.id)
        .join(AlertRule, AlertRule.target_id == AlertTarget.id)
        .where(
            AlertRule.event == finding.event,
            AlertRule.enabled.is_(True),
            AlertTarget.enabled.is_(True),
            (AlertRule.group_id.is_(None) | (AlertRule.group_id == group_id)),
        )
        .distinct()
    ).all()
    for target_id in targets:
        session.add(
            AlertDelivery(alert_id=alert.id, target_id=target_id, kind="opened", next_try=now)
        )
    return alert


def _close(session: Session, alert: Alert, now: datetime) -> None:
    """Closed; the targets told of the opening are told of the recovery, and an
    opening not yet told is dropped (a blip is not worth two messages)."""
    alert.closed = now
    for delivery in session.scalars(
        select(AlertDelivery).where(
            AlertDelivery.alert_id == alert.id, AlertDelivery.kind == "opened"
        )
    ):
        if delivery.sent is None:
            session.delete(delivery)
        else:
            session.add(
                AlertDelivery(
                    alert_id=alert.id, target_id=delivery.target_id, kind="recovered", next_try=now
                )
            )


def findings(
    session: Session, now: datetime, unjudged: frozenset[EventKind] = frozenset()
) -> Iterator[Finding]:
    """Every condition that is wrong at ``now`` (of the events not in ``unjudged``)."""
    hosts = list(session.scalars(select(Host)))
    live = {host.id: host for host in hosts if host.revoked is None}
    for host in hosts:
        if host.revoked is not None:
            yield Finding(
                f"agent-revoked:host{host.id}",
                "agent-revoked",
                host.id,
                f"{shown(host.name)}: its agent was revoked at {_when(host.revoked)}",
            )
    yield from _failed_runs(session, live)
    for status in host_statuses(session, list(live.values()), now) if live else ():
        host = status.host
        if not status.online and "host-offline" not in unjudged:
            heard = f"{_age(now - host.last_seen)} ago" if host.last_seen else "never"
            yield Finding(
                f"host-offline:host{host.id}",
                "host-offline",
                host.id,
                f"{shown(host.name)}: offline, last heard from {heard}",
            )
        for plan in status.overdue_plans if "host-overdue" not in unjudged else ():
            done = f"{_age(now - status.last_good)} ago" if status.last_good else "never"
            yield Finding(
                f"host-overdue:host{host.id}:{plan}",
                "host-overdue",
                host.id,
                f"{shown(host.name)}: plan {shown(plan)} is overdue (last good backup: {done})",
            )
    full = get_setting(session, "storage_full_ratio")
    for repo in session.scalars(select(Repository)):
        if repo.last_check_ok is False:
            yield Finding(
                f"check-error:repo{repo.id}",
                "check-error",
                None,
                f"repository {shown(repo.name)}: its last check found errors",
            )
        free, capacity = repo.free_bytes, repo.capacity_bytes
        if free is not None and capacity and capacity - free > full * capacity:
            yield Finding(
                f"storage-full:repo{repo.id}",
                "storage-full",
                None,
                f"repository {shown(repo.name)}: {free * 100 / capacity:.1f} % free "
                f"({free:,} of {capacity:,} bytes)",
            )


def _failed_runs(session: Session, hosts: dict[int, Host]) -> Iterator[Finding]:
    """The last finished run (ok or failed) of each host, plan and kind: failed is a
    ``run-failed`` (backup) or ``check-error`` (check) until a good run follows. The
    agent numbers its runs in order (``agent_run_id``), so no clock decides "last"."""
    last = (
        select(Run.host_id, Run.plan, Run.kind, func.max(Run.agent_run_id).label("number"))
        .where(Run.status.in_(("ok", "failed")))
        .group_by(Run.host_id, Run.plan, Run.kind)
        .subquery()
    )
    failed = session.scalars(
        select(Run)
        .join(
            last,
            (Run.host_id == last.c.host_id)
            & (Run.plan == last.c.plan)
            & (Run.kind == last.c.kind)
            & (Run.agent_run_id == last.c.number),
        )
        .where(Run.status == "failed")
    )
    for run in failed:
        host = hosts.get(run.host_id)
        if host is None:
            continue
        event: EventKind = "check-error" if run.kind == "check" else "run-failed"
        what = "repository check" if run.kind == "check" else "backup"
        yield Finding(
            f"{event}:host{host.id}:{run.plan}",
            event,
            host.id,
            f"{shown(host.name)}: plan {shown(run.plan)}: {what} failed: {shown(run.error or '?')}",
        )


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _age(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"
