"""When a plan runs: schedule specs parsed into ``Schedule`` objects, and the clock.

Three kinds of spec, all read in one time zone (the machine's unless one is given):

  cron       five fields, ``0 2 * * *`` (croniter reads them)
  calendar   ``hourly``, ``daily [HH:MM]``, ``weekly [DAY] [HH:MM]``,
             ``monthly [DAY] [HH:MM]``: cron expressions by another name
  interval   ``every 6h`` (s, m, h, d): the next run comes that long after the last;
             ``every 2s`` exists so that tests can run a real agent in seconds

A window (``Mon-Fri 08:00-20:00``, ``22:00-06:00``) says when runs may start: a fire
time outside it moves to the window's next opening.

Daylight saving: a wall-clock time that a spring-forward skips fires at the first
moment after the gap; one that a fall-back repeats fires at its first occurrence only
(for cron fields naming an hour; ``*`` in the hour field runs by real time), as cron
daemons do. So a daily run neither skips nor doubles on either day.

``next_after(moment)`` is pure: the caller passes the time, so the scheduler is tested
with a ``FakeClock`` that never sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Final, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from blockvault.errors import ScheduleError

__all__ = [
    "Alarm",
    "Clock",
    "FakeClock",
    "RealClock",
    "Schedule",
    "Window",
    "fire_time",
    "jitter",
    "local_zone",
    "parse_schedule",
    "parse_window",
]

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LONGEST_INTERVAL: Final = timedelta(days=366)
# how far period() and the window search look ahead
_PERIOD_FIRES: Final = 500
_PERIOD_SPAN: Final = timedelta(days=400)


def local_zone() -> tzinfo:
    """The machine's time zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except (OSError, ValueError):
        return UTC


@dataclass(frozen=True)
class Window:
    """The days (0 = Monday) and the time of day when runs may start. ``end`` before
    ``start`` spans midnight; the days name the day it opens."""

    days: frozenset[int]
    start: time
    end: time  # time(0) with start time(0): the whole day

    def contains(self, local: datetime) -> bool:
        t = local.time().replace(tzinfo=None, fold=0)
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= t < self.end
        # whole day (start == end) or across midnight
        if weekday in self.days and t >= self.start:
            return True
        return (weekday - 1) % 7 in self.days and t < self.end and self.start != self.end

    def next_open(self, moment: datetime, zone: tzinfo) -> datetime:
        """``moment`` if the window is open then, else the next time it opens."""
        local = moment.astimezone(zone)
        if self.contains(local):
            return moment
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            if day.weekday() in self.days:
                opening = _wall(day, self.start, zone)
                if opening > moment:
                    return opening
        raise AssertionError("a window with days opens within a week")  # parse checks days


@dataclass(frozen=True)
class Schedule:
    """A parsed spec: ``next_after`` gives fire times, ``period`` the longest gap
    between two of them (what ``status`` calls overdue is 1.25 times that)."""

    spec: str
    zone: tzinfo
    cron: str | None = None  # the cron expression of a cron or calendar spec
    interval: timedelta | None = None
    window: Window | None = None

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after ``moment`` (aware; returned in UTC)."""
        if moment.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        fire = moment + self.interval if self.interval is not None else self._next_cron(moment)
        if self.window is not None:
            fire = self.window.next_open(fire, self.zone)
        return fire.astimezone(UTC)

    @property
    def period(self) -> timedelta:
        """The longest gap between consecutive fire times over a year (or 500 fires),
        reckoned in UTC so that DST does not stretch it: ``daily`` is a day,
        ``0 2 * * 1-5`` three days."""
        nominal = replace(self, zone=UTC)
        start = moment = nominal.next_after(datetime(2001, 1, 1, tzinfo=UTC))
        longest = timedelta(0)
        for _ in range(_PERIOD_FIRES):
            following = nominal.next_after(moment)
            longest = max(longest, following - moment)
            moment = following
            if moment - start > _PERIOD_SPAN:
                break
        return longest

    def _next_cron(self, moment: datetime) -> datetime:
        assert self.cron is not None
        hour_fixed = self.cron.split()[1] != "*"
        fires = croniter(self.cron, moment.astimezone(self.zone))
        while True:
            fire: datetime = fires.get_next(datetime)
            if fire <= moment:  # croniter steps in wall time; never go back in real time
                continue
            if hour_fixed and _repeated(fire, self.zone):
                continue  # the second 02:30 of a fall-back night: it already fired
            return fire


def parse_schedule(spec: str, window: str | None = None, zone: tzinfo | None = None) -> Schedule:
    """Read a schedule spec (and a window spec); ``ScheduleError`` names what is wrong."""
    zone = zone if zone is not None else local_zone()
    words = spec.lower().split()
    if not words:
        raise ScheduleError(
            what="schedule",
            spec=spec,
            detail="empty; give cron fields, 'daily 02:00' or 'every 6h'",
        )
    parsed_window = parse_window(window) if window is not None else None
    if words[0] == "every":
        return Schedule(spec, zone, interval=_interval(spec, words), window=parsed_window)
    cron = _calendar(spec, words) if words[0] in _CALENDAR else " ".join(words)
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ScheduleError(
            what="schedule",
            spec=spec,
            detail="not a schedule: give 5 cron fields ('0 2 * * *'), hourly, daily [HH:MM], "
            "weekly [DAY] [HH:MM], monthly [DAY] [HH:MM] or 'every 6h'",
        )
    return Schedule(spec, zone, cron=cron, window=parsed_window)


def parse_window(spec: str) -> Window:
    """``[DAYS] HH:MM-HH:MM`` where DAYS is ``Mon-Fri``, ``Sat,Sun`` or a mix."""
    words = spec.split()
    start_text, dash, end_text = words[-1].partition("-") if words else ("", "", "")
    if len(words) not in (1, 2) or not dash or ":" not in start_text:
        raise ScheduleError(
            what="window", spec=spec, detail="a window is '[Mon-Fri] 08:00-20:00', days optional"
        )
    days = _days(spec, words[0].lower(), "window") if len(words) == 2 else frozenset(range(7))
    start = _clock_time(spec, start_text, "window")
    end = _clock_time(spec, end_text, "window", allow_24=True)
    return Window(days, start, end)


def fire_time(
    schedule: Schedule,
    slot: datetime | None,
    jitter: timedelta,
    *,
    not_before: datetime | None = None,
) -> datetime | None:
    """When the agent fires a plan whose next slot is ``slot``: the slot plus the plan's
    jitter, no sooner than ``not_before`` (a missed slot waits for the start-up delay),
    inside the window. No slot (never fired, or owed a run): at ``not_before``. The
    agent's scheduler and ``status`` both ask this, so they cannot disagree."""
    due = not_before if slot is None else slot + jitter
    if due is None:
        return None
    if not_before is not None:
        due = max(due, not_before)
    if schedule.window is not None:  # the delay or the jitter may have left it
        due = schedule.window.next_open(due, schedule.zone)
    return due


def jitter(host_id: str, plan: str, maximum: timedelta) -> timedelta:
    """A delay in [0, maximum] fixed for this host and plan: a fleet whose plans say
    02:00 spreads its start times, and each machine starts at the same time each night."""
    if maximum <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(f"{host_id}\0{plan}".encode()).digest()
    whole = int(maximum.total_seconds())
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % (whole + 1))


class Alarm:
    """Cuts a clock's sleep short. ``ring()`` only writes a byte to a pipe, so a
    signal handler may call it (an Event's lock could deadlock there) as well as
    any thread."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    @property
    def signal_fd(self) -> int:
        """For ``signal.set_wakeup_fd``: a signal delivered to another thread than the
        sleeping one still cuts its sleep short (Python runs handlers in the main
        thread only, once it wakes)."""
        return self._write

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: it rings already
            os.write(self._write, b"!")

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a ring; True (and silenced) if it rang."""
        ready, _, _ = select.select([self._read], [], [], max(seconds, 0.0))
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass
        return True

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class Clock(Protocol):
    """Where the scheduler gets the time and waits: real, or fake in tests."""

    def now(self) -> datetime:
        """The current time, aware UTC."""

    def sleep(self, seconds: float, alarm: Alarm) -> None:
        """Wait ``seconds``, or less if ``alarm`` rings."""


class RealClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float, alarm: Alarm) -> None:
        alarm.wait(seconds)


class FakeClock:
    """A clock that moves only when told, or by exactly what ``sleep`` asks: a test
    of three days passes in no time and the same way every run."""

    def __init__(self, start: datetime) -> None:
        self.moment = start.astimezone(UTC)

    def now(self) -> datetime:
        return self.moment

    def sleep(self, seconds: float, alarm: Alarm) -> None:
        if not alarm.wait(0):
            self.moment += timedelta(seconds=max(seconds, 0.0))

    def advance(self, delta: timedelta) -> None:
        self.moment += delta


_CALENDAR: Final = ("hourly", "daily", "weekly", "monthly")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


def _calendar(spec: str, words: list[str]) -> str:
    """The cron expression a calendar spec stands for."""
    word, rest = words[0], words[1:]
    at = time(0)
    if rest and ":" in rest[-1]:
        at = _clock_time(spec, rest.pop())
    if word == "hourly":
        if rest or at != time(0):
            raise ScheduleError(
                what="schedule", spec=spec, detail="'hourly' takes nothing more; use cron fields"
            )
        return "0 * * * *"
    day = "0" if word == "weekly" else "*"  # cron's @weekly: Sunday
    if len(rest) > 1:
        raise ScheduleError(what="schedule", spec=spec, detail=f"too many words after '{word}'")
    if word == "daily" and rest:
        raise ScheduleError(
            what="schedule", spec=spec, detail="'daily' takes a time only, such as 'daily 02:00'"
        )
    if word == "weekly" and rest:
        if rest[0] not in DAYS:
            raise ScheduleError(
                what="schedule", spec=spec, detail=f"'{rest[0]}' is not a day: use mon … sun"
            )
        day = str((DAYS.index(rest[0]) + 1) % 7)  # cron counts from Sunday = 0
    month_day = "*"
    if word == "monthly":
        month_day = "1"
        if rest:
            if not rest[0].isdigit() or not 1 <= int(rest[0]) <= 28:
                raise ScheduleError(
                    what="schedule",
                    spec=spec,
                    detail=f"day '{rest[0]}': give 1-28 (a day every month has), or cron fields",
                )
            month_day = str(int(rest[0]))
    return f"{at.minute} {at.hour} {month_day} * {day}"


def _interval(spec: str, words: list[str]) -> timedelta:
    match = re.fullmatch(r"(\d{1,7})([smhd])", "".join(words[1:]))
    if len(words) not in (2, 3) or match is None:
        raise ScheduleError(
            what="schedule",
            spec=spec,
            detail="an interval is 'every N' with s, m, h or d: 'every 6h'",
        )
    interval = timedelta(seconds=int(match[1]) * UNITS[match[2]])
    if not timedelta(0) < interval <= LONGEST_INTERVAL:
        raise ScheduleError(what="schedule", spec=spec, detail="give an interval from 1s to 366d")
    return interval


def _days(spec: str, text: str, what: str = "schedule") -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            raise ScheduleError(
                what=what, spec=spec, detail=f"'{part}' is not a day or range: use Mon-Fri, Sat,Sun"
            )
        a = DAYS.index(first)
        b = DAYS.index(last) if dash else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _clock_time(spec: str, text: str, what: str = "schedule", *, allow_24: bool = False) -> time:
    match = _TIME.fullmatch(text)
    if match is None:
        raise ScheduleError(
            what=what, spec=spec, detail=f"'{text}' is not a time: use HH:MM, 00:00-23:59"
        )
    hour, minute = int(match[1]), int(match[2])
    if allow_24 and (hour, minute) == (24, 0):
        return time(0)
    if hour > 23 or minute > 59:
        raise ScheduleError(
            what=what, spec=spec, detail=f"'{text}' is not a time: use HH:MM, 00:00-23:59"
        )
    return time(hour, minute)


def _wall(day: date, at: time, zone: tzinfo) -> datetime:
    """The real moment a wall-clock time of ``zone`` names; in a spring-forward gap,
    the first moment after it."""
    naive = datetime.combine(day, at)
    late = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if late.astimezone(zone).replace(tzinfo=None) == naive:
        return late
    # in the gap: late reads after naive, early before; the clock jumped between them
    early = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    while late - early > timedelta(seconds=1):
        middle = early + (late - early) / 2
        if middle.astimezone(zone).replace(tzinfo=None) < naive:
            early = middle
        else:
            late = middle
    return late.replace(microsecond=0)


def _repeated(fire: datetime, zone: tzinfo) -> bool:
    """Whether ``fire`` is the second occurrence of its wall-clock time (fall-back)."""
    local = fire.astimezone(zone)
    first = local.replace(tzinfo=None).replace(tzinfo=zone, fold=0)
    return first.astimezone(UTC) < local.astimezone(UTC)
