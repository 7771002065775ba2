"""Targets, rules and the SMTP server: checked here once for the API, the pages and
the CLI. Bad input is a ``UsageError`` that names the field and says what to give.

The SMTP server is the setting ``alerts.smtp``: a table with the keys of a plans
file's ``[smtp]`` (host, port, security, from, user, password-file, ca-file, timeout),
checked by ``plans.notify.smtp_settings``, the code that sends the agent's mail. The
thresholds (``overdue_factor``, ``offline_after``, ``storage_full_ratio``) are the
center's settings (``center/settings.py``), shared with the dashboard's view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center.models import AlertRule, AlertTarget, Group, Setting
from blockvault.errors import UsageError
from blockvault.plans.notify import SmtpSettings, parse_target, smtp_settings

__all__ = [
    "EVENTS",
    "SMTP_KEY",
    "EventKind",
    "add_rule",
    "add_target",
    "find_target",
    "set_smtp",
    "smtp_of",
    "smtp_shown",
]

EventKind = Literal[
    "run-failed", "host-overdue", "host-offline", "check-error", "storage-full", "agent-revoked"
]
EVENTS: Final[tuple[EventKind, ...]] = get_args(EventKind)
SECRET_MAX: Final = 256  # characters of a webhook's HMAC key
NAME_MAX: Final = 64
SMTP_KEY: Final = "alerts.smtp"


def smtp_of(session: Session) -> SmtpSettings | None:
    """The center's SMTP server; None: none is set. ``UsageError`` when the stored
    table no longer checks out (its CA file was removed)."""
    row = session.get(Setting, SMTP_KEY)
    return smtp_settings(row.value) if row is not None and isinstance(row.value, dict) else None


def smtp_shown(session: Session) -> dict[str, Any] | None:
    """The stored SMTP table as given (the password stays in its file)."""
    row = session.get(Setting, SMTP_KEY)
    return dict(row.value) if row is not None and isinstance(row.value, dict) else None


def set_smtp(session: Session, table: Mapping[str, Any] | None) -> None:
    """Set the SMTP server (checked first), or forget it (None: no mail goes out)."""
    row = session.get(Setting, SMTP_KEY)
    if table is None:
        if row is not None:
            session.delete(row)
        return
    smtp_settings(table)  # UsageError naming the key
    if row is None:
        session.add(Setting(key=SMTP_KEY, value=dict(table)))
    else:
        row.value = dict(table)
    session.flush()


def add_target(session: Session, name: str, address: str, secret: str | None = None) -> AlertTarget:
    """A new target: ``mailto:ADDRESS`` or an ``http(s)://`` webhook URL, with an
    optional HMAC secret (webhooks only)."""
    _check_name(name, "target")
    if "#" in address:
        raise UsageError(f"alert target {name}: {address!r}: no '#options' here (give the URL)")
    kind = parse_target(address).kind  # UsageError saying what is wrong
    if secret is not None:
        if kind != "webhook":
            raise UsageError(f"alert target {name}: a secret signs webhooks, not mail")
        if not 16 <= len(secret) <= SECRET_MAX or not secret.isprintable():
            raise UsageError(
                f"alert target {name}: the secret is 16 to {SECRET_MAX} printable characters"
            )
    if session.scalar(select(AlertTarget).where(AlertTarget.name == name)) is not None:
        raise UsageError(f"alert target {name} exists already; remove it first or pick a name")
    target = AlertTarget(name=name, kind=kind, address=address, secret=secret)
    session.add(target)
    session.flush()
    return target


def find_target(session: Session, name: str) -> AlertTarget:
    target = session.scalar(select(AlertTarget).where(AlertTarget.name == name))
    if target is None:
        raise UsageError(f"no alert target {name!r}: `blockvault center alert target list`")
    return target


def add_rule(
    session: Session, event: str, target: AlertTarget, group: str | None = None
) -> AlertRule:
    """Alerts of ``event`` (of hosts in ``group``; None: every alert) go to ``target``."""
    if event not in EVENTS:
        raise UsageError(f"alert rule: event {event!r}: give one of {', '.join(EVENTS)}")
    group_id = None
    if group is not None:
        found = session.scalar(select(Group).where(Group.name == group))
        if found is None:
            raise UsageError(f"alert rule: no host group {group!r}")
        group_id = found.id
    rule = AlertRule(event=event, group_id=group_id, target_id=target.id)
    session.add(rule)
    session.flush()
    return rule


def _check_name(name: str, what: str) -> None:
    if not 0 < len(name) <= NAME_MAX or not name.isprintable() or name != name.strip():
        raise UsageError(f"alert {what} name {name!r}: 1 to {NAME_MAX} printable characters")
