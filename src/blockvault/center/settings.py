"""The center's settings: a few numbers an admin may change while it runs.

Each has a default, a unit and bounds here; the ``settings`` table holds only what an
admin changed (``PUT /api/v1/settings``). Parts read them with ``get_setting`` at the
moment they decide (a worker's round, a request), so a change takes effect without a
restart. What the server needs before it can open its database is ``center.toml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from sqlalchemy.orm import Session

from blockvault.center.auth import audit
from blockvault.center.models import Setting
from blockvault.center.users import Actor
from blockvault.errors import CenterSettingError as SettingError

__all__ = ["SETTINGS", "SettingSpec", "all_settings", "change_settings", "get_setting"]

DAY: Final = 86400


@dataclass(frozen=True)
class SettingSpec:
    default: float
    low: float
    high: float
    integer: bool  # seconds and counts are whole numbers
    help: str


SETTINGS: Final[Mapping[str, SettingSpec]] = {
    "offline_after": SettingSpec(
        900, 60, 7 * DAY, True, "seconds without a heartbeat after which a host is offline"
    ),
    "overdue_factor": SettingSpec(
        1.25,
        1.0,
        10.0,
        False,
        "a host is overdue when its last good run is older than this many times its plan's period",
    ),
    "retention_min_age": SettingSpec(
        DAY,
        0,
        365 * DAY,
        True,
        "seconds since the center first saw a snapshot before "
        "maintenance may prune it, whatever the retention rules say",
    ),
    "storage_full_ratio": SettingSpec(
        0.9, 0.5, 1.0, False, "used/capacity of a repository's storage that raises an alert"
    ),
    "audit_keep_days": SettingSpec(365, 30, 3650, True, "days the audit log is kept"),
}


def _valid(key: str, value: object) -> float:
    spec = SETTINGS.get(key)
    if spec is None:
        raise SettingError(f"no such setting; known: {', '.join(SETTINGS)}", key=key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingError("must be a number", key=key)
    if spec.integer and value != int(value):
        raise SettingError("must be a whole number", key=key)
    if not spec.low <= value <= spec.high:
        raise SettingError(f"must be from {spec.low:g} to {spec.high:g}", key=key)
    return int(value) if spec.integer else float(value)


def get_setting(session: Session, key: str) -> float:
    """The setting's value: what an admin stored, else its default. A stored value
    that no longer fits (bounds changed in an upgrade) gives way to the default."""
    stored = session.get(Setting, key)
    if stored is not None:
        try:
            return _valid(key, stored.value)
        except SettingError:
            pass
    return SETTINGS[key].default


def all_settings(session: Session) -> dict[str, float]:
    return {key: get_setting(session, key) for key in SETTINGS}


def change_settings(
    session: Session, actor: Actor, values: Mapping[str, object]
) -> dict[str, float]:
    """Store ``values`` (all checked before any is stored) and audit the change."""
    checked = {key: _valid(key, value) for key, value in values.items()}
    before = all_settings(session)
    for key, value in checked.items():
        row = session.get(Setting, key)
        if row is None:
            session.add(Setting(key=key, value=value))
        else:
            row.value = value
    changed: dict[str, object] = {
        k: {"from": before[k], "to": v} for k, v in checked.items() if before[k] != v
    }
    if changed:
        audit(
            session, actor.name, "settings.update", "settings", changed, actor.address, at=actor.at
        )
    session.flush()
    return all_settings(session)
