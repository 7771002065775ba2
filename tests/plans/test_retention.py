"""Retention policies: restic's forget semantics, checked against an independent
group-by formulation (hypothesis) and hand-made timelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockvault.errors import UsageError
from blockvault.plans import Policy, apply_policy
from blockvault.repo import PartitionRecord, Selector, Snapshot

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PERIODS = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: t.date(),
    "weekly": lambda t: t.isocalendar()[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}


def snap(
    when: datetime, n: int, host: str = "h", source: str = "/dev/sda", tags: tuple[str, ...] = ()
) -> Snapshot:
    return Snapshot(
        time=when.astimezone(UTC).isoformat(timespec="microseconds"),
        host=host,
        source=source,
        disk_size=1,
        sector_size=512,
        table="gpt",
        disk_id="",
        partitions=(PartitionRecord(1, 0, 1, "linux", "ext4", 1, True),),
        index="",
        chunk_size=4096,
        compression="none",
        tags=tags,
        id=f"{n:064x}",
    )


def kept(decisions: list) -> set[str]:  # type: ignore[type-arg]
    return {d.snapshot.id for d in decisions if d.keep}


def oracle(snaps: list[Snapshot], policy: Policy, tz: timezone) -> set[str]:
    """Per rule: group by period, take the N most recent periods, the newest in each."""
    order = sorted(snaps, key=lambda s: (datetime.fromisoformat(s.time), s.id), reverse=True)
    keep = {s.id for s in order[: policy.last]}
    for name, period in PERIODS.items():
        n = getattr(policy, name)
        buckets: dict[object, Snapshot] = {}
        for s in order:
            buckets.setdefault(period(datetime.fromisoformat(s.time).astimezone(tz)), s)
        periods = sorted(
            buckets,
            key=lambda b: (datetime.fromisoformat(buckets[b].time), buckets[b].id),
            reverse=True,
        )
        keep |= {buckets[b].id for b in periods[:n]}
    return keep


times = st.lists(
    st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2029, 12, 31), timezones=st.just(UTC)
    ),
    min_size=0,
    max_size=60,
)
policies = st.builds(
    Policy,
    last=st.integers(0, 5),
    hourly=st.integers(0, 5),
    daily=st.integers(0, 10),
    weekly=st.integers(0, 6),
    monthly=st.integers(0, 12),
    yearly=st.integers(0, 4),
).filter(lambda p: not p.empty)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
)


@settings(max_examples=300, deadline=None)
@given(times, policies, zones)
def test_matches_the_group_by_oracle(when: list[datetime], policy: Policy, tz: timezone) -> None:
    snaps = [snap(t, n) for n, t in enumerate(when)]
    decisions = apply_policy(snaps, policy, now=NOW, tz=tz)
    assert len(decisions) == len(snaps)
    assert kept(decisions) == oracle(snaps, policy, tz)
    for d in decisions:
        assert d.keep == bool(d.reasons)


@settings(max_examples=200, deadline=None)
@given(times, policies, st.sampled_from(["last", "daily", "weekly", "monthly", "yearly"]))
def test_keeping_more_never_removes_a_kept_snapshot(
    when: list[datetime], policy: Policy, rule: str
) -> None:
    snaps = [snap(t, n) for n, t in enumerate(when)]
    more = Policy(**{**policy.__dict__, rule: getattr(policy, rule) + 1})
    assert kept(apply_policy(snaps, policy, now=NOW, tz=UTC)) <= kept(
        apply_policy(snaps, more, now=NOW, tz=UTC)
    )


@settings(max_examples=100, deadline=None)
@given(times, times, policies)
def test_groups_are_pruned_on_their_own(
    a: list[datetime], b: list[datetime], policy: Policy
) -> None:
    first = [snap(t, n) for n, t in enumerate(a)]
    second = [snap(t, 1000 + n, source="/dev/sdb") for n, t in enumerate(b)]
    together = kept(apply_policy(first + second, policy, now=NOW, tz=UTC))
    assert together == kept(apply_policy(first, policy, now=NOW, tz=UTC)) | kept(
        apply_policy(second, policy, now=NOW, tz=UTC)
    )


def test_daily_for_two_years() -> None:
    start = datetime(2023, 1, 1, 3, 0, tzinfo=UTC)
    snaps = [snap(start + timedelta(days=d), d) for d in range(730)]  # 2023-01-01 .. 2024-12-30
    decisions = apply_policy(
        snaps, Policy(daily=7, weekly=4, monthly=12, yearly=3), now=NOW, tz=UTC
    )
    by_day = {
        datetime.fromisoformat(d.snapshot.time).date().isoformat(): d for d in decisions if d.keep
    }
    days = sorted(by_day)
    # 2024-12-30 is a Monday, in ISO week 1 of 2025: the 4 newest weeks end on Dec 30,
    # 29, 22 and 15; the 12 newest months are 2024's; 2023 gets its yearly.
    assert days[-7:] == [f"2024-12-{d}" for d in range(24, 31)]
    assert {"2024-12-22", "2024-12-15"} <= set(days) and "2024-12-08" not in days
    assert {"2024-11-30", "2024-10-31", "2024-02-29", "2024-01-31"} <= set(days)
    assert by_day["2023-12-31"].reasons == ("yearly",)
    assert by_day["2024-12-30"].reasons == ("daily", "weekly", "monthly", "yearly")
    assert by_day["2024-12-29"].reasons == ("daily", "weekly")
    assert len(days) == 7 + 2 + 11 + 1


def test_iso_weeks_cross_the_year() -> None:
    # 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in ISO week 53 of 2020
    snaps = [
        snap(datetime(2020, 12, 31, tzinfo=UTC), 1),
        snap(datetime(2021, 1, 3, tzinfo=UTC), 2),
        snap(datetime(2021, 1, 4, tzinfo=UTC), 3),
    ]
    assert kept(apply_policy(snaps, Policy(weekly=2), now=NOW, tz=UTC)) == {
        f"{2:064x}",
        f"{3:064x}",
    }
    # but the years differ
    assert kept(apply_policy(snaps, Policy(yearly=2), now=NOW, tz=UTC)) == {
        f"{1:064x}",
        f"{3:064x}",
    }


def test_time_zone_decides_the_day() -> None:
    # 23:30 and 00:30 UTC are one day in UTC+2 (01:30 and 02:30 next day)... and two in UTC
    a = snap(datetime(2024, 5, 1, 23, 30, tzinfo=UTC), 1)
    b = snap(datetime(2024, 5, 2, 0, 30, tzinfo=UTC), 2)
    assert len(kept(apply_policy([a, b], Policy(daily=5), now=NOW, tz=UTC))) == 2
    assert (
        len(kept(apply_policy([a, b], Policy(daily=5), now=NOW, tz=timezone(timedelta(hours=2)))))
        == 1
    )


def test_hosts_tags_within_and_empty_policy() -> None:
    snaps = [
        snap(datetime(2029, 12, 31, 20, tzinfo=UTC), 1, host="a", tags=("daily", "db")),
        snap(datetime(2029, 12, 31, 21, tzinfo=UTC), 2, host="a", tags=("daily",)),
        snap(datetime(2029, 12, 1, tzinfo=UTC), 3, host="b"),
    ]
    decisions = apply_policy(snaps, Policy(last=1), now=NOW, tz=UTC, selector=Selector(host="a"))
    assert {d.snapshot.id: d.keep for d in decisions} == {f"{1:064x}": False, f"{2:064x}": True}
    decisions = apply_policy(snaps, Policy(last=1), now=NOW, tz=UTC, tags=("daily,db",))
    assert [d.snapshot.id for d in decisions] == [f"{1:064x}"]
    decisions = apply_policy(snaps, Policy(within=timedelta(days=1)), now=NOW, tz=UTC)
    assert kept(decisions) == {f"{1:064x}", f"{2:064x}"}
    assert {d.reasons for d in decisions if d.keep} == {("within 1d",)}
    with pytest.raises(UsageError):
        apply_policy(snaps, Policy(), now=NOW, tz=UTC)
    with pytest.raises(UsageError):
        Policy(daily=-1)
