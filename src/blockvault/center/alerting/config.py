"""Targets, rules and the alert settings: checked here once for the API, the pages and
the CLI. Bad input is a ``UsageError`` that names the field and says what to give.

The settings live in the ``settings`` table under ``alerts.*`` keys: ``alerts.smtp``
is a table with the keys of a plans file's ``[smtp]`` (host, port, security, from,
user, password-file, ca-file, timeout; checked by ``plans.notify.smtp_settings``),
``alerts.overdue-factor`` (1.25: a plan is overdue when its last good backup is older
than this many periods), ``alerts.offline-minutes`` (30) and
``alerts.storage-free-percent`` (10).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center.models import AlertRule, AlertTarget, Group, Setting
from blockvault.errors import UsageError
from blockvault.plans.notify import SmtpSettings, parse_target, smtp_settings

__all__ = [
    "EVENTS",
    "AlertSettings",
    "EventKind",
    "add_rule",
    "add_target",
    "change_settings",
    "find_target",
    "read_settings",
]

EventKind = Literal[
    "run-failed", "host-overdue", "host-offline", "check-error", "storage-full", "agent-revoked"
]
EVENTS: Final[tuple[EventKind, ...]] = get_args(EventKind)
SECRET_MAX: Final = 256  # characters of a webhook's HMAC key
NAME_MAX: Final = 64


@dataclass(frozen=True)
class AlertSettings:
    smtp: SmtpSettings | None = None  # None: email targets cannot be sent to
    overdue_factor: float = 1.25
    offline_after: timedelta = timedelta(minutes=30)
    storage_free_percent: float = 10.0

    @property
    def shown(self) -> dict[str, Any]:
        """As the API shows them (the SMTP password stays in its file)."""
        smtp = self.smtp
        return {
            "smtp": None
            if smtp is None
            else {
                "host": smtp.host,
                "port": smtp.port,
                "security": smtp.security,
                "from": smtp.sender,
                "user": smtp.user,
                "password-file": smtp.password_file,
                "ca-file": smtp.ca_file,
                "timeout": smtp.timeout,
            },
            "overdue-factor": self.overdue_factor,
            "offline-minutes": self.offline_after.total_seconds() / 60,
            "storage-free-percent": self.storage_free_percent,
        }


_NUMBERS: Final[Mapping[str, tuple[float, float]]] = {  # key: (least, most)
    "overdue-factor": (1.0, 100.0),
    "offline-minutes": (1.0, 60.0 * 24 * 30),
    "storage-free-percent": (0.0, 99.0),
}


def read_settings(session: Session) -> AlertSettings:
    rows = session.scalars(select(Setting).where(Setting.key.startswith("alerts."))).all()
    values = {row.key.removeprefix("alerts."): row.value for row in rows}
    smtp = values.get("smtp")
    defaults = AlertSettings()
    return AlertSettings(
        smtp=smtp_settings(smtp) if isinstance(smtp, dict) else None,
        overdue_factor=float(values.get("overdue-factor", defaults.overdue_factor)),
        offline_after=timedelta(
            minutes=float(
                values.get("offline-minutes", defaults.offline_after.total_seconds() / 60)
            )
        ),
        storage_free_percent=float(
            values.get("storage-free-percent", defaults.storage_free_percent)
        ),
    )


def change_settings(session: Session, changes: Mapping[str, Any]) -> AlertSettings:
    """Set the given settings (``smtp`` None removes the SMTP server); each is checked
    before any is stored."""
    checked: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "smtp":
            if value is not None:
                if not isinstance(value, dict):
                    raise UsageError("alert settings: smtp is a table (host, port, from...)")
                smtp_settings(value)  # UsageError naming the key
            checked[key] = value
        elif key in _NUMBERS:
            least, most = _NUMBERS[key]
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not least <= value <= most
            ):
                raise UsageError(f"alert settings: {key} is a number from {least:g} to {most:g}")
            checked[key] = value
        else:
            known = ", ".join(["smtp", *_NUMBERS])
            raise UsageError(f"alert settings: unknown setting {key!r}; known: {known}")
    for key, value in checked.items():
        row = session.get(Setting, f"alerts.{key}")
        if value is None:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(Setting(key=f"alerts.{key}", value=value))
        else:
            row.value = value
    session.flush()
    return read_settings(session)


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
