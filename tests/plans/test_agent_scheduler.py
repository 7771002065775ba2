"""The agent's scheduler driven by a fake clock: no test here sleeps. Runs are a
stand-in runner whose calls the test lets end one by one (the real runner is
exercised by the end-to-end tests of the agent process)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blockvault.events import Event
from blockvault.plans.agent import Job, Limits, Reckoning, Scheduler, job_jitter
from blockvault.plans.model import Plan, Trigger
from blockvault.plans.schedule import FakeClock, parse_schedule
from blockvault.plans.status import plan_status
from blockvault.plans.store import History, PlanBook

START = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)  # a Wednesday
NO_DELAY = Limits(concurrency=4, startup_delay=timedelta(0), max_start_delay=None)


@dataclass
class StandIn:
    """Records each call; a call ends when the test releases it (or at once when
    ``instant``), or when its stop event is set."""

    clock: FakeClock
    instant: bool = False
    calls: list[tuple[str, Trigger, datetime]] = field(default_factory=list)
    gates: list[threading.Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job(self, name: str, spec: str, **kwargs: object) -> Job:
        return Job(name, parse_schedule(spec, zone=UTC), self.run_for(name), **kwargs)  # type: ignore[arg-type]

    def run_for(self, name: str) -> Callable[[Trigger, threading.Event], str]:
        def run(trigger: Trigger, stop: threading.Event) -> str:
            gate = threading.Event()
            with self.lock:
                self.calls.append((name, trigger, self.clock.now()))
                self.gates.append(gate)
            if self.instant:
                return "ok"
            while not gate.wait(0.01):  # the run's own work: ends when let go or stopped
                if stop.is_set():
                    return "interrupted"
            return "ok"

        return run

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


def run_for(scheduler: Scheduler, clock: FakeClock, span: timedelta) -> None:
    """Drive the scheduler as serve() does, for ``span`` of fake time; instant runs
    are let end before each next step, so the order of events is fixed."""
    end = clock.now() + span
    while clock.now() < end:
        wait = scheduler.step()
        for run in list(scheduler.running.values()):
            run.thread.join()
        if scheduler.running or scheduler.pending:
            scheduler.step()
            continue
        clock.sleep(min(wait, end - clock.now()).total_seconds() or 0.001, scheduler.alarm)


@pytest.fixture
def reckoning(tmp_path: Path) -> Reckoning:
    return Reckoning(tmp_path / "plans.db")


def test_three_days_off_fires_once_then_keeps_the_schedule(reckoning: Reckoning) -> None:
    reckoning.set("nightly", START - timedelta(days=3, hours=11))  # fired 3 days ago 01:00
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    limits = Limits(startup_delay=timedelta(minutes=2), max_start_delay=None)
    scheduler = Scheduler([runner.job("nightly", "daily 02:00")], reckoning, clock, limits=limits)
    scheduler.step()
    assert runner.calls == []  # the start-up delay first
    run_for(scheduler, clock, timedelta(days=2))
    # once for the three missed nights, after 2 minutes; then each night at 02:00
    assert [(t, m.strftime("%d %H:%M")) for _, t, m in runner.calls] == [
        ("missed", "07 12:02"),
        ("schedule", "08 02:00"),
        ("schedule", "09 02:00"),
    ]


def test_restart_after_a_fired_run_does_not_fire_again(tmp_path: Path) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    job = runner.job("nightly", "daily 02:00")
    first = Scheduler([job], Reckoning(tmp_path / "plans.db"), clock, limits=NO_DELAY)
    run_for(first, clock, timedelta(hours=15))  # fires at 02:00 on the 8th
    assert len(runner.calls) == 1
    clock.advance(timedelta(hours=1))  # down an hour, no slot passes
    second = Scheduler([job], Reckoning(tmp_path / "plans.db"), clock, limits=NO_DELAY)
    run_for(second, clock, timedelta(hours=2))
    assert len(runner.calls) == 1


def test_a_run_the_agent_stopped_fires_once_at_the_next_start(tmp_path: Path) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock)
    job = runner.job("nightly", "daily 02:00")
    first = Scheduler([job], Reckoning(tmp_path / "plans.db"), clock, limits=NO_DELAY)
    clock.advance(timedelta(hours=14, minutes=1))  # 02:01 on the 8th
    first.step()
    assert runner.names() == ["nightly"]
    first.stop()  # SIGTERM: the run is stopped through its stop event
    first.join()
    # the agent is back at 03:00: the stopped run fires again, once
    clock.advance(timedelta(hours=1))
    second = Scheduler([job], Reckoning(tmp_path / "plans.db"), clock, limits=NO_DELAY)
    runner.instant = True
    run_for(second, clock, timedelta(hours=2))
    assert [t for _, t, _ in runner.calls] == ["schedule", "missed"]


def test_a_dst_night_fires_once(reckoning: Reckoning) -> None:
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    clock = FakeClock(datetime(2026, 10, 24, 12, tzinfo=berlin))
    runner = StandIn(clock, instant=True)
    job = Job("nightly", parse_schedule("daily 02:30", zone=berlin), runner.run_for("nightly"))
    scheduler = Scheduler([job], reckoning, clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(days=2))
    assert [m.astimezone(berlin).strftime("%d %H:%M%z") for _, _, m in runner.calls] == [
        "25 02:30+0200",
        "26 02:30+0100",
    ]


def test_triggers_while_a_plan_runs_coalesce_into_one_more(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock)
    scheduler = Scheduler([runner.job("often", "every 10s")], reckoning, clock, limits=NO_DELAY)
    scheduler.step()
    assert runner.names() == ["often"]  # an interval plan that never ran is due now
    for _ in range(5):  # 50 s: five fire times pass while the first run goes on
        clock.advance(timedelta(seconds=10))
        scheduler.step()
    assert runner.names() == ["often"] and list(scheduler.pending) == ["often"]
    runner.release_all()
    scheduler.running["often"].thread.join()
    scheduler.step()  # the one coalesced run starts, never beside the first
    assert runner.names() == ["often", "often"]
    runner.release_all()
    scheduler.running["often"].thread.join()
    scheduler.step()
    assert runner.names() == ["often", "often"] and not scheduler.pending


def test_concurrency_limit(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock)
    jobs = [runner.job(name, "every 1h") for name in ("a", "b", "c")]
    limits = Limits(concurrency=2, startup_delay=timedelta(0), max_start_delay=None)
    scheduler = Scheduler(jobs, reckoning, clock, limits=limits)
    scheduler.step()
    assert runner.names() == ["a", "b"] and list(scheduler.pending) == ["c"]
    runner.gates[0].set()
    scheduler.running["a"].thread.join()
    scheduler.step()
    assert runner.names() == ["a", "b", "c"] and len(scheduler.running) == 2


def test_max_start_delay_skips_a_run_that_could_not_start(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock)
    skipped: list[tuple[str, str]] = []
    limits = Limits(
        concurrency=1,
        startup_delay=timedelta(0),
        max_start_delay=timedelta(hours=1),
        longest_sleep=timedelta(days=1),
    )
    jobs = [runner.job("long", "every 6h"), runner.job("short", "every 6h")]
    scheduler = Scheduler(
        jobs, reckoning, clock, limits=limits, on_skipped=lambda n, t, q: skipped.append((n, t))
    )
    scheduler.step()
    assert runner.names() == ["long"]
    clock.sleep(scheduler.step().total_seconds(), scheduler.alarm)  # to the delay's end
    assert clock.now() == START + timedelta(hours=1)
    scheduler.step()
    assert skipped == [("short", "schedule")] and not scheduler.pending
    assert reckoning.get("short") == START + timedelta(hours=1)  # next due 6 h from the skip
    runner.release_all()
    scheduler.join()
    assert runner.names() == ["long"]


def test_timeout_stops_the_run_through_its_stop_event(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock)
    events: list[Event] = []
    job = runner.job("slow", "every 1d", timeout=timedelta(minutes=30))
    limits = replace(NO_DELAY, longest_sleep=timedelta(days=1))
    scheduler = Scheduler([job], reckoning, clock, limits=limits, reporter=events.append)
    scheduler.step()
    clock.sleep(scheduler.step().total_seconds(), scheduler.alarm)
    assert clock.now() == START + timedelta(minutes=30)  # the next thing was the timeout
    scheduler.step()
    scheduler.join()  # ends only because the stop event was set: the gate stays shut
    assert not scheduler.running
    assert any("timed out" in str(e) for e in events)
    assert reckoning.get("slow") == START  # a timed-out run counts as fired


def test_new_cron_plan_waits_for_its_first_fire_time(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    scheduler = Scheduler([runner.job("n", "daily 13:00")], reckoning, clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(minutes=59))
    assert runner.calls == []
    run_for(scheduler, clock, timedelta(minutes=2))
    assert [m for _, _, m in runner.calls] == [START + timedelta(hours=1)]


def test_reload_adds_and_removes_plans(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    scheduler = Scheduler([runner.job("a", "every 1h")], reckoning, clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(minutes=30))
    scheduler.replace_jobs([runner.job("b", "every 1h")])
    run_for(scheduler, clock, timedelta(hours=2))
    assert runner.names() == ["a", "b", "b"]


def test_jitter_delays_each_fire_by_a_fixed_amount(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    schedule = parse_schedule("daily 02:00", zone=UTC)
    delay = job_jitter("host-a", "nightly", schedule, timedelta(minutes=30))
    assert timedelta(0) < delay <= timedelta(minutes=30)
    assert job_jitter("host-a", "nightly", schedule, timedelta(minutes=30)) == delay
    fast = parse_schedule("every 2s")
    assert job_jitter("host-a", "nightly", fast, timedelta(minutes=30)) <= timedelta(seconds=0.2)
    job = Job("nightly", schedule, runner.run_for("nightly"), jitter=delay)
    scheduler = Scheduler([job], reckoning, clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(days=2))
    expected = [datetime(2026, 1, d, 2, tzinfo=UTC) + delay for d in (8, 9)]
    assert [m for _, _, m in runner.calls] == expected


def test_a_clock_set_back_does_not_hold_plans_back(reckoning: Reckoning) -> None:
    # the last fire was recorded by a clock a year fast; the clock is right again
    reckoning.set("nightly", START + timedelta(days=365))
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    scheduler = Scheduler([runner.job("nightly", "daily 02:00")], reckoning, clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(days=1))
    assert [m for _, _, m in runner.calls] == [datetime(2026, 1, 8, 2, tzinfo=UTC)]


def test_a_damaged_reckoning_counts_as_never_fired(reckoning: Reckoning, tmp_path: Path) -> None:
    import sqlite3

    reckoning.set("nightly", START)
    db = sqlite3.connect(tmp_path / "plans.db")
    db.execute("UPDATE agent_reckoning SET since = 'not a time'")
    db.commit()
    db.close()
    assert reckoning.get("nightly") is None


def test_a_missed_run_waits_for_the_window(reckoning: Reckoning) -> None:
    # fired Tuesday 14:00; the agent is back Wednesday 21:00, after the window shut
    reckoning.set("office", START - timedelta(hours=22))
    clock = FakeClock(START + timedelta(hours=9))
    runner = StandIn(clock, instant=True)
    job = Job(
        "office",
        parse_schedule("every 6h", "Mon-Fri 08:00-20:00", zone=UTC),
        runner.run_for("office"),
    )
    scheduler = Scheduler([job], reckoning, clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(hours=12))
    assert [(t, m) for _, t, m in runner.calls] == [("missed", datetime(2026, 1, 8, 8, tzinfo=UTC))]


def test_jitter_does_not_start_a_run_outside_its_window(reckoning: Reckoning) -> None:
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    schedule = parse_schedule("daily 19:59", "08:00-20:00", zone=UTC)
    job = Job("late", schedule, runner.run_for("late"), jitter=timedelta(minutes=10))
    scheduler = Scheduler([job], reckoning, clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(days=1))
    assert [m for _, _, m in runner.calls] == [datetime(2026, 1, 8, 8, tzinfo=UTC)]


def test_status_shows_when_the_agent_really_fires(tmp_path: Path) -> None:
    """``status``'s next run is the time the scheduler fires the plan: counted from the
    agent's reckoning (not the history, which a stand-in runner leaves empty) and with
    the plan's jitter."""
    plans_file = tmp_path / "plans.toml"
    plan = Plan("sixhourly", "/srv/repo", "disk", ("/dev/sdz",), "every 6h")
    PlanBook(plans_file, {plan.name: plan}).save()
    history = History.beside(plans_file)
    clock = FakeClock(START)
    runner = StandIn(clock, instant=True)
    schedule = parse_schedule(plan.schedule, zone=UTC)
    jitter = job_jitter("host-a", plan.name, schedule, timedelta(minutes=30))
    assert jitter > timedelta(0)
    job = Job(plan.name, schedule, runner.run_for(plan.name), jitter=jitter)
    scheduler = Scheduler([job], Reckoning(history.path), clock, limits=NO_DELAY)
    run_for(scheduler, clock, timedelta(hours=1))  # an interval plan fires at once
    assert [when for _, _, when in runner.calls] == [START]
    told = plan_status(plan, history, clock.now()).next_run
    assert told == START + timedelta(hours=6) + jitter
    run_for(scheduler, clock, timedelta(hours=7))
    assert [when for _, _, when in runner.calls][1] == told
