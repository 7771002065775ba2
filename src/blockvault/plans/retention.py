"""Which snapshots a retention policy keeps: grandfather-father-son, as restic's
``forget`` defines it.

Snapshots are grouped by origin: host, disk and the set of imaged partitions, so two
disks (or a whole disk and one of its partitions) are never pruned against each other.
The disk is the snapshot's ``source_id`` (wwn, serial, image file...), not its device
path: two disks seen as /dev/sda at different times are two groups. A snapshot made
before identities were recorded is grouped with the others of its path that have
none; it never joins an identified group it might not belong to (that can only keep
more, never remove another disk's last snapshot).
Within a group, newest first, each rule keeps the newest snapshot of each of the last
N periods that *have* snapshots (an hour, a day, an ISO week, a month, a year in the
time zone given); ``last`` keeps the N newest. A snapshot kept by any rule is kept,
and every rule it satisfies is a reason. ``within`` keeps everything newer than
``now - within``. Pure: no clock, the caller passes ``now`` and the time zone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, tzinfo
from typing import Final

from blockvault.errors import UsageError
from blockvault.repo import Selector, Snapshot

__all__ = [
    "RULES",
    "Decision",
    "Policy",
    "apply_policy",
    "duration_text",
    "group_key",
    "parse_duration",
    "snapshot_time",
    "time_problem",
]

GroupKey = tuple[str, str, tuple[int, ...]]
EVERY_SNAPSHOT: Final = Selector()  # no --host, no --source


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "within" and (not isinstance(value, int) or value < 0):
                raise UsageError(f"--keep-{f.name} {value}: give a whole number, 0 or more")
        if self.within is not None and self.within < timedelta(0):
            raise UsageError("--keep-within must not be negative")

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name, _ in RULES) and not self.within


@dataclass(frozen=True)
class Decision:
    snapshot: Snapshot
    keep: bool
    reasons: tuple[str, ...]  # the rules that keep it ("daily", ...); empty when removed
    group: GroupKey


# Each rule maps a snapshot's local time to its period; two snapshots in the same
# period share a value. "last" uses the snapshot's position: every snapshot differs.
_Bucket = Callable[[datetime, int], object]
RULES: Final[tuple[tuple[str, _Bucket], ...]] = (
    ("last", lambda t, n: n),
    ("hourly", lambda t, n: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t, n: (t.year, t.month, t.day)),
    ("weekly", lambda t, n: t.isocalendar()[:2]),
    ("monthly", lambda t, n: (t.year, t.month)),
    ("yearly", lambda t, n: t.year),
)


def snapshot_time(snapshot: Snapshot) -> datetime:
    """The manifest's time as an aware datetime (manifests store UTC)."""
    if problem := time_problem(snapshot):
        raise UsageError(f"snapshot {snapshot.id[:12]}: {problem}")
    return datetime.fromisoformat(snapshot.time)


def time_problem(snapshot: Snapshot) -> str | None:
    """Why a manifest's time cannot be judged (a damaged or hostile manifest), or None."""
    shown = repr(snapshot.time[:40])  # escaped and bounded: it came from the repository
    try:
        when = datetime.fromisoformat(snapshot.time)
    except ValueError:
        return f"its time {shown} is not an ISO 8601 time"
    return None if when.tzinfo is not None else f"its time {shown} has no time zone"


def group_key(snapshot: Snapshot) -> GroupKey:
    """Host, disk identity (``path:`` and the device path when none was recorded)
    and imaged partitions: equal keys are the same origin (``Snapshot.same_origin``)."""
    disk = snapshot.source_id or f"path:{snapshot.source}"
    return (snapshot.host, disk, snapshot.imaged_partitions_numbers)


def _selected(snapshot: Snapshot, selector: Selector, tags: Sequence[str]) -> bool:
    if not selector.matches(snapshot):
        return False
    if not tags:
        return True
    # each --tag is a comma-separated set that must all be present; any set matches
    have = set(snapshot.tags)
    return any(set(t for t in spec.split(",") if t) <= have for spec in tags)


def apply_policy(
    snapshots: Iterable[Snapshot],
    policy: Policy,
    *,
    now: datetime,
    tz: tzinfo,
    selector: Selector = EVERY_SNAPSHOT,
    tags: Sequence[str] = (),
) -> list[Decision]:
    """A decision for every snapshot that ``selector`` (host, source) and ``tags``
    select (others are not considered, so they are kept), grouped by origin, newest
    first within each group."""
    if policy.empty:
        raise UsageError(
            "no --keep-* option given: that would remove every snapshot; nothing was removed"
        )
    groups: dict[GroupKey, list[Snapshot]] = {}
    for snap in snapshots:
        if _selected(snap, selector, tags):
            groups.setdefault(group_key(snap), []).append(snap)
    decisions: list[Decision] = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda s: (snapshot_time(s), s.id), reverse=True)
        counts = {name: getattr(policy, name) for name, _ in RULES}
        last_seen: dict[str, object] = {}
        for position, snap in enumerate(members):
            local = snapshot_time(snap).astimezone(tz)
            reasons = []
            for name, bucket in RULES:
                if counts[name] <= 0:
                    continue
                value = bucket(local, position)
                if name in last_seen and last_seen[name] == value:
                    continue
                last_seen[name] = value
                counts[name] -= 1
                reasons.append(name)
            if policy.within is not None and snapshot_time(snap) >= now - policy.within:
                reasons.append(f"within {duration_text(policy.within)}")
            decisions.append(Decision(snap, bool(reasons), tuple(reasons), key))
    return decisions


_UNITS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``2w``, ``1y6m``... (m = minutes)."""
    parts = re.findall(r"(\d+)([mhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"duration {text!r}: use a number and a unit m, h, d, w or y (e.g. 7d)")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def duration_text(delta: timedelta) -> str:
    """The shortest exact ``parse_duration`` spelling in one unit: ``7d``, ``90m``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
