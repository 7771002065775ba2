"""Schedule specs: what each kind fires, across daylight-saving changes, and the
errors bad specs get. Times are given as wall clock in a named zone, so the expected
values come from the zone database, not from the code under test."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from blockvault.errors import ScheduleError, UsageError
from blockvault.plans.schedule import jitter, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")  # DST 2026: Mar 29 02:00 -> 03:00, Oct 25 03:00 -> 02:00
NEW_YORK = ZoneInfo("America/New_York")


def at(zone: ZoneInfo, *fields: int, fold: int = 0) -> datetime:
    return datetime(*fields, tzinfo=zone, fold=fold).astimezone(UTC)  # type: ignore[misc]


def fires(spec: str, start: datetime, until: datetime, window: str | None = None) -> list[datetime]:
    schedule = parse_schedule(spec, window, zone=BERLIN)
    moments, moment = [], start
    while (moment := schedule.next_after(moment)) < until:
        moments.append(moment)
    return moments


def local(moments: list[datetime]) -> list[str]:
    return [m.astimezone(BERLIN).strftime("%a %d %H:%M%z") for m in moments]


@pytest.mark.parametrize("spec", ["daily 02:30", "30 2 * * *"])
def test_daily_across_spring_forward_runs_once_each_day(spec: str) -> None:
    # 02:30 does not exist on Mar 29: the run comes at the first moment after the gap
    got = fires(spec, at(BERLIN, 2026, 3, 27, 12), at(BERLIN, 2026, 3, 31, 12))
    assert local(got) == [
        "Sat 28 02:30+0100",
        "Sun 29 03:00+0200",
        "Mon 30 02:30+0200",
        "Tue 31 02:30+0200",
    ]


@pytest.mark.parametrize("spec", ["daily 02:30", "30 2 * * *"])
def test_daily_across_fall_back_runs_once_each_day(spec: str) -> None:
    # 02:30 happens twice on Oct 25: only the first fires
    got = fires(spec, at(BERLIN, 2026, 10, 23, 12), at(BERLIN, 2026, 10, 27, 12))
    assert local(got) == [
        "Sat 24 02:30+0200",
        "Sun 25 02:30+0200",
        "Mon 26 02:30+0100",
        "Tue 27 02:30+0100",
    ]


def test_hour_wildcard_runs_by_real_time_through_fall_back() -> None:
    # every half hour keeps running through the repeated hour: 01:30 +02:00 to 03:30 +01:00
    # is 3 real hours, so 7 runs 30 minutes apart, 02:00 and 02:30 twice by the wall clock
    got = fires("*/30 * * * *", at(BERLIN, 2026, 10, 25, 1), at(BERLIN, 2026, 10, 25, 4))
    assert len(got) == 7
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(got))


def test_calendar_words() -> None:
    start = at(BERLIN, 2026, 1, 7, 12)  # a Wednesday
    assert local([parse_schedule("hourly", zone=BERLIN).next_after(start)]) == ["Wed 07 13:00+0100"]
    assert local([parse_schedule("daily", zone=BERLIN).next_after(start)]) == ["Thu 08 00:00+0100"]
    weekly = parse_schedule("weekly sun 03:00", zone=BERLIN)
    assert local([weekly.next_after(start)]) == ["Sun 11 03:00+0100"]
    assert local([parse_schedule("weekly", zone=BERLIN).next_after(start)]) == ["Sun 11 00:00+0100"]
    monthly = parse_schedule("monthly 15 04:05", zone=BERLIN)
    assert local([monthly.next_after(start)]) == ["Thu 15 04:05+0100"]
    assert local([parse_schedule("monthly", zone=BERLIN).next_after(start)]) == [
        "Sun 01 00:00+0100"
    ]


def test_interval_counts_from_the_moment_given() -> None:
    schedule = parse_schedule("every 6h", zone=BERLIN)
    start = at(BERLIN, 2026, 1, 7, 12, 17)
    assert schedule.next_after(start) == start + timedelta(hours=6)
    assert parse_schedule("every 2s").next_after(start) == start + timedelta(seconds=2)


def test_interval_in_a_window_waits_for_the_window() -> None:
    got = fires(
        "every 6h", at(BERLIN, 2026, 1, 9, 9), at(BERLIN, 2026, 1, 13, 0), "Mon-Fri 08:00-20:00"
    )
    # Friday 15:00; 21:00 is shut, so Monday 08:00, then 14:00, 20:00 is shut -> Tue 08:00
    assert local(got) == ["Fri 09 15:00+0100", "Mon 12 08:00+0100", "Mon 12 14:00+0100"]


def test_window_across_midnight() -> None:
    schedule = parse_schedule("every 1h", "22:00-02:00", zone=BERLIN)
    assert local([schedule.next_after(at(BERLIN, 2026, 1, 7, 12))]) == ["Wed 07 22:00+0100"]
    assert local([schedule.next_after(at(BERLIN, 2026, 1, 7, 23, 30))]) == ["Thu 08 00:30+0100"]
    assert local([schedule.next_after(at(BERLIN, 2026, 1, 8, 1, 30))]) == ["Thu 08 22:00+0100"]


def test_window_opening_in_a_spring_forward_gap_opens_after_it() -> None:
    schedule = parse_schedule("every 1h", "Sun 02:30-05:00", zone=BERLIN)
    assert local([schedule.next_after(at(BERLIN, 2026, 3, 28, 12))]) == ["Sun 29 03:00+0200"]


def test_period_is_the_longest_gap() -> None:
    assert parse_schedule("daily 02:00", zone=BERLIN).period == timedelta(days=1)
    assert parse_schedule("0 2 * * 1-5", zone=BERLIN).period == timedelta(days=3)
    assert parse_schedule("every 30m").period == timedelta(minutes=30)
    weekdays = parse_schedule("every 6h", "Mon-Fri 08:00-20:00", zone=BERLIN)
    # runs at 08:00 and 14:00 (20:00 is shut): Friday 14:00 to Monday 08:00
    assert weekdays.period == timedelta(hours=66)
    assert parse_schedule("monthly", zone=BERLIN).period == timedelta(days=31)


def test_new_york_spring_forward_daily() -> None:
    schedule = parse_schedule("daily 02:15", zone=NEW_YORK)  # 2026-03-08 02:00 -> 03:00
    first = schedule.next_after(at(NEW_YORK, 2026, 3, 7, 12))
    second = schedule.next_after(first)
    assert first.astimezone(NEW_YORK).strftime("%d %H:%M") == "08 03:00"
    assert second.astimezone(NEW_YORK).strftime("%d %H:%M") == "09 02:15"


@pytest.mark.parametrize(
    ("spec", "window", "words"),
    [
        ("", None, "empty"),
        ("sometimes", None, "not a schedule"),
        ("0 25 * * *", None, "not a schedule"),
        ("* * * *", None, "not a schedule"),
        ("daily 25:00", None, "'25:00' is not a time"),
        ("weekly funday 03:00", None, "'funday' is not a day"),
        ("monthly 31", None, "give 1-28"),
        ("every", None, "an interval is"),
        ("every 6x", None, "an interval is"),
        ("every 0s", None, "from 1s to 366d"),
        ("every 400d", None, "from 1s to 366d"),
        ("hourly 03:00", None, "'hourly' takes nothing more"),
        ("daily", "Mon-Fri", "a window is"),
        ("daily", "Mon-Xyz 08:00-20:00", "'mon-xyz' is not a day"),
        ("daily", "08:00-20:61", "'20:61' is not a time"),
    ],
)
def test_bad_specs_get_one_clear_line(spec: str, window: str | None, words: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(spec, window, zone=BERLIN)
    assert isinstance(caught.value, UsageError)
    message = str(caught.value)
    assert words in message and "\n" not in message
    what, named = ("window", window) if window is not None else ("schedule", spec)
    assert message.startswith(f"{what} '{named}': ")


def test_jitter_is_fixed_per_host_and_plan_and_bounded() -> None:
    most = timedelta(minutes=10)
    assert jitter("host-a", "nightly", most) == jitter("host-a", "nightly", most)
    spread = {jitter(f"host-{n}", "nightly", most) for n in range(200)}
    assert len(spread) > 100  # a fleet spreads out
    assert all(timedelta(0) <= s <= most for s in spread)
    assert jitter("host-a", "nightly", timedelta(0)) == timedelta(0)
