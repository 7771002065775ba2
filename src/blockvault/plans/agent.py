"""The agent's scheduler: fires each plan when its schedule says, within its limits.

Glossary:
  job        one plan as the scheduler sees it: a name, a schedule, its jitter and
             timeout, and the callable that runs it once (the plan runner).
  reckoned   the moment a plan's next fire time is counted from: when it last fired.
             It is saved in the plans database when a run ends, and only then, so a
             run cut short by a stop of the agent, SIGKILL or a power loss fires again,
             once, when the agent is back.
  missed     a fire time that passed while the agent was down: the plan runs once (not
             once per missed slot) after the start-up delay.
  pending    a trigger waiting to start: for the concurrency limit, or because the plan
             is still running (a plan never overlaps itself; triggers meanwhile
             coalesce into this one). One that waits longer than the maximum start
             delay is skipped.

The scheduler runs each plan in a thread of its own and stops it through the stop
event the runner watches (timeout, shutdown). ``step()`` does what is due now and says
how long nothing else is; ``serve()`` alternates it with the clock's sleep, so a
``FakeClock`` drives days of schedule in no time. The library never prints: what the
agent does goes to the reporter as events.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Final

from blockvault.errors import BlockvaultError, Interrupted
from blockvault.events import Event, Noted, Reporter, Warned, quiet
from blockvault.plans.model import Plan, Trigger
from blockvault.plans.runner import OnFinished, run_check, run_plan
from blockvault.plans.schedule import Alarm, Clock, Schedule, fire_time, jitter, parse_schedule
from blockvault.plans.store import SKIPPED_WHY, History, PlanBook, Reckoning

__all__ = [
    "DEFAULT_LIMITS",
    "Agent",
    "Job",
    "Limits",
    "Reckoning",
    "RunOutcome",
    "Scheduler",
    "host_id",
    "job_jitter",
]

RunOutcome = str  # the run's final status as the runner reports it: "ok", "failed", ...
# runs the plan once; returns its final status; stops soon after ``stop`` is set
RunOnce = Callable[[Trigger, threading.Event], RunOutcome]

JITTER_SHARE: Final = 10  # jitter is at most a tenth of the plan's period
CLOCK_SLACK: Final = timedelta(minutes=5)  # a last fire this far ahead of now: clock set back


@dataclass(frozen=True)
class Job:
    name: str
    schedule: Schedule
    run: RunOnce
    timeout: timedelta | None = None
    jitter: timedelta = timedelta(0)


@dataclass(frozen=True)
class Limits:
    concurrency: int = 1  # runs at once, all plans together
    startup_delay: timedelta = timedelta(minutes=2)  # before missed runs fire
    max_start_delay: timedelta | None = timedelta(hours=12)  # pending longer: skipped
    longest_sleep: timedelta = timedelta(minutes=1)  # look again at least this often
    # (a clock stepped by NTP or a suspend is noticed within it)


DEFAULT_LIMITS: Final = Limits()


def host_id() -> str:
    """This machine's stable identity for jitter: /etc/machine-id, else its name."""
    try:
        with open("/etc/machine-id", encoding="ascii") as file:
            text = file.read(64).strip()
            if text:
                return text
    except (OSError, UnicodeDecodeError):
        pass
    return os.uname().nodename


def job_jitter(host: str, name: str, schedule: Schedule, maximum: timedelta) -> timedelta:
    """The plan's fixed delay after each fire time: per host, at most ``maximum`` and
    at most a tenth of the schedule's period (an ``every 2s`` plan is not delayed a
    minute)."""
    if maximum <= timedelta(0):
        return timedelta(0)
    return jitter(host, name, min(maximum, schedule.period / JITTER_SHARE))


@dataclass
class _Pending:
    trigger: Trigger
    queued: datetime  # when it became due (for the maximum start delay)


@dataclass
class _Running:
    thread: threading.Thread
    stop: threading.Event
    fired: datetime
    started: datetime
    outcome: list[RunOutcome] = field(default_factory=list)
    timed_out: bool = False


class Scheduler:
    """Fires jobs on their schedules; see the module docstring for the rules."""

    def __init__(
        self,
        jobs: Iterable[Job],
        reckoning: Reckoning,
        clock: Clock,
        *,
        limits: Limits = DEFAULT_LIMITS,
        reporter: Reporter = quiet,
        on_skipped: Callable[[str, Trigger, datetime], None] | None = None,
        owed: Iterable[str] = (),
    ) -> None:
        self.clock = clock
        self.limits = limits
        self.reporter = reporter
        self.on_skipped = on_skipped
        self.alarm = Alarm()  # rung by finishing runs and by the agent's signal handlers
        self.started = clock.now()
        self.stopping = False
        self.jobs: dict[str, Job] = {}
        self.running: dict[str, _Running] = {}
        self.pending: dict[str, _Pending] = {}  # insertion order is queue order
        self._reckoning = reckoning
        self._since: dict[str, datetime | None] = {}
        # plans whose run a dead agent left unfinished: each runs once, as missed
        self._owed = set(owed)
        self.replace_jobs(jobs)

    def replace_jobs(self, jobs: Iterable[Job]) -> None:
        """Take a new set of jobs (the plans file was reloaded). A removed plan's run
        goes on to its end; an added plan is reckoned from now (cron) or due now
        (interval), unless the database knows when it last fired."""
        self.jobs = {job.name: job for job in jobs}
        for name in list(self.pending):
            if name not in self.jobs:
                del self.pending[name]
        now = self.clock.now()
        for name, job in self.jobs.items():
            self._reckoning.set_jitter(name, job.jitter)  # for status (plans/status.py)
            if name in self._since:
                continue
            since = self._reckoning.get(name)
            if since is None and job.schedule.interval is None:
                since = now  # a new cron plan waits for its first fire time
                self._reckoning.set(name, since)
            self._since[name] = since

    def step(self) -> timedelta:
        """Do what is due now: reap ended runs, stop those past their timeout, queue
        due plans, start what the limits allow. Returns how long until the next thing."""
        now = self.clock.now()
        self._reap()
        for name, run in self.running.items():
            timeout = self.jobs[name].timeout if name in self.jobs else None
            if timeout is not None and not run.timed_out and now - run.started >= timeout:
                run.timed_out = True
                run.stop.set()
                self.reporter(Warned(f"plan {name}: timed out after {timeout}; stopping it"))
        if not self.stopping:
            for name in self.jobs:
                since = self._since[name]
                if since is not None and since > now + CLOCK_SLACK:
                    # fired "in the future": the clock was stepped back since. Counting
                    # from then would hold the plan back until the clock catches up.
                    self.reporter(
                        Warned(
                            f"plan {name}: last fired {since:%Y-%m-%d %H:%M:%S} UTC, after "
                            "the clock's now; the clock was set back: counting from now"
                        )
                    )
                    self._since[name] = now
                if self._due(name) > now:
                    continue
                if name not in self.pending:
                    slot = self._slot(name)
                    missed = name in self._owed or (slot is not None and slot < self.started)
                    self._owed.discard(name)
                    self.pending[name] = _Pending("missed" if missed else "schedule", now)
                self._since[name] = now  # the pending run covers every slot until now
            self._start_pending(now)
        return self._quiet_for(now)

    def serve(self, *, reload: Callable[[], Iterable[Job] | None] | None = None) -> None:
        """Step and sleep until ``stop()``; between steps, ``reload()`` may hand new
        jobs (it returns None when nothing changed). Ends with every run ended."""
        while not self.stopping:
            if reload is not None and (jobs := reload()) is not None:
                self.replace_jobs(jobs)
            wait = self.step()
            if self.stopping:
                break
            self.clock.sleep(wait.total_seconds(), self.alarm)
        self.join()

    def stop(self) -> int:
        """Stop firing, and stop every running run; how many were running. Safe from
        a signal handler: only flags and the alarm's pipe."""
        self.stopping = True
        runs = list(self.running.values())
        for run in runs:
            run.stop.set()
        self.alarm.ring()
        return len(runs)

    def join(self) -> None:
        """Wait until every started run has ended, and record them."""
        for run in list(self.running.values()):
            run.thread.join()
        self._reap()

    def _slot(self, name: str) -> datetime | None:
        since = self._since[name]
        return None if since is None else self.jobs[name].schedule.next_after(since)

    def _due(self, name: str) -> datetime:
        """When the plan should start: its next slot plus its jitter; a missed (or
        owed, or first interval) run after the start-up delay; inside the window."""
        job = self.jobs[name]
        slot = None if name in self._owed else self._slot(name)
        after_delay = self.started + self.limits.startup_delay
        missed = slot is None or slot < self.started  # (never ran, owed, or missed)
        due = fire_time(job.schedule, slot, job.jitter, not_before=after_delay if missed else None)
        assert due is not None  # not_before is given when there is no slot
        return due

    def _start_pending(self, now: datetime) -> None:
        for name, pending in list(self.pending.items()):
            if name in self.running:
                continue  # never overlap: it starts when the running one ends
            most = self.limits.max_start_delay
            if most is not None and now - pending.queued >= most:
                del self.pending[name]
                self._reckoning.set(name, now)
                self.reporter(
                    Warned(
                        f"plan {name}: skipped, it could not start within {most} "
                        f"(due since {pending.queued:%Y-%m-%d %H:%M:%S} UTC)"
                    )
                )
                if self.on_skipped is not None:
                    self.on_skipped(name, pending.trigger, pending.queued)
                continue
            if len(self.running) >= self.limits.concurrency:
                continue  # a later one may not start either, but may expire
            del self.pending[name]
            self._launch(self.jobs[name], pending, now)

    def _launch(self, job: Job, pending: _Pending, now: datetime) -> None:
        stop = threading.Event()
        fired = self._since[job.name] or now  # the last slot this run covers
        run = _Running(threading.Thread(), stop, fired=fired, started=now)

        def body() -> None:
            try:
                run.outcome.append(job.run(pending.trigger, stop))
            except Exception as exc:  # a bug in one run must not stop the agent
                run.outcome.append(f"failed: {type(exc).__name__}: {exc}")
            finally:
                self.alarm.ring()

        run.thread = threading.Thread(target=body, name=f"plan {job.name}", daemon=True)
        self.running[job.name] = run
        self.reporter(Noted(f"plan {job.name}: started ({pending.trigger})"))
        run.thread.start()

    def _reap(self) -> None:
        for name, run in list(self.running.items()):
            if run.thread.is_alive():
                continue
            run.thread.join()
            del self.running[name]
            outcome = run.outcome[0] if run.outcome else "failed"
            shutdown = self.stopping and not run.timed_out
            if not shutdown:  # a run the agent's stop cut short fires again next start
                self._reckoning.set(name, run.fired)
            note = "timed out" if run.timed_out else outcome
            event = Noted if outcome == "ok" else Warned
            self.reporter(event(f"plan {name}: {note}"))

    def _quiet_for(self, now: datetime) -> timedelta:
        moments = [now + self.limits.longest_sleep]
        if not self.stopping:
            moments += [self._due(name) for name in self.jobs]
        for name, run in self.running.items():
            timeout = self.jobs[name].timeout if name in self.jobs else None
            if timeout is not None and not run.timed_out:
                moments.append(run.started + timeout)
        if self.limits.max_start_delay is not None:
            moments += [p.queued + self.limits.max_start_delay for p in self.pending.values()]
        return max(min(moments) - now, timedelta(0))


class Agent:
    """The plans of one plans file, fired by a ``Scheduler``: what ``blockvault agent``
    runs. Each run goes through the plan runner, recorded in the history beside the
    plans file; the scheduler's own state (when each plan last fired) is a table of
    the same database. Signals are the caller's: it calls ``stop()`` (SIGTERM) and
    ``request_reload()`` (SIGHUP), both safe from a signal handler."""

    def __init__(
        self,
        plans_file: Path,
        *,
        clock: Clock,
        limits: Limits = DEFAULT_LIMITS,
        jitter_max: timedelta = timedelta(0),
        reporter: Reporter = quiet,
        host: str | None = None,
        zone: tzinfo | None = None,
        on_finished: OnFinished | None = None,
        extra_plans: Callable[[], Iterable[Plan]] | None = None,
    ) -> None:
        self.plans_file = plans_file
        # plans from elsewhere run beside the file's (a center's, cached by its link);
        # asked again at each reload
        self.extra_plans = extra_plans
        self.history = History.beside(plans_file)
        self.reporter = reporter
        self.host = host if host is not None else host_id()
        self.zone = zone
        self.jitter_max = jitter_max
        self.on_finished = on_finished
        self._reload_requested = False
        book = PlanBook.load(plans_file)  # a bad file at start: the caller's error
        for record in self.history.interrupted_leftovers():
            reporter(
                Warned(f"plan {record.plan}: run {record.run_id} was cut short: {record.error}")
            )
        # a plan whose last run was interrupted (killed, stopped, power lost) is owed one
        owed = [
            name
            for name in book.plans
            if (last := self.history.last(name)) is not None and last.status == "interrupted"
        ]
        self.scheduler = Scheduler(
            self._jobs(book),
            Reckoning(self.history.path),
            clock,
            limits=limits,
            reporter=reporter,
            on_skipped=self._record_skipped,
            owed=owed,
        )
        self._book = book

    def serve(self) -> None:
        """Fire plans until ``stop()``; returns once every run has ended."""
        self.reporter(Noted(f"agent: running {self._summary(self._book)} of {self.plans_file}"))
        self.scheduler.serve(reload=self._reload)

    def stop(self) -> int:
        """Stop (SIGTERM); how many runs were stopped."""
        return self.scheduler.stop()

    def request_reload(self) -> None:
        self._reload_requested = True
        self.scheduler.alarm.ring()

    def _reload(self) -> list[Job] | None:
        if not self._reload_requested:
            return None
        self._reload_requested = False
        try:
            book = PlanBook.load(self.plans_file)
            jobs = self._jobs(book)
        except BlockvaultError as exc:  # keep running the plans we have
            self.reporter(Warned(f"agent: reload failed, keeping the plans as they were: {exc}"))
            return None
        self._book = book
        self.reporter(Noted(f"agent: reloaded, {self._summary(book)}"))
        return jobs

    def _jobs(self, book: PlanBook) -> list[Job]:
        extra = list(self.extra_plans()) if self.extra_plans is not None else []
        enabled = [plan for plan in [*book.plans.values(), *extra] if plan.enabled]
        return [self._job(plan) for plan in enabled] + [
            self._check_job(plan) for plan in enabled if plan.check is not None
        ]

    def _check_job(self, plan: Plan) -> Job:
        """The plan's scheduled ``check --read-data --subset N%``, a job of its own
        (``NAME:check``: a colon no plan name has), recorded in the plan's history as a
        run of kind "check" and told to its notify targets like a backup."""
        assert plan.check is not None
        schedule = parse_schedule(plan.check.schedule, None, self.zone)
        history, reporter, on_finished = self.history, self.reporter, self.on_finished
        name = f"{plan.name}{CHECK_SUFFIX}"

        def run(trigger: Trigger, stop: threading.Event) -> RunOutcome:
            try:
                record = run_check(
                    plan,
                    history,
                    trigger=trigger,
                    reporter=_stopping_reporter(stop, name, reporter),
                    on_finished=on_finished,
                )
            except Interrupted:
                return "interrupted"
            return record.status + (f": {record.error}" if record.error else "")

        return Job(
            name, schedule, run, jitter=job_jitter(self.host, name, schedule, self.jitter_max)
        )

    def _job(self, plan: Plan) -> Job:
        schedule = parse_schedule(plan.schedule, plan.window, self.zone)
        history, reporter, on_finished = self.history, self.reporter, self.on_finished

        def run(trigger: Trigger, stop: threading.Event) -> RunOutcome:
            try:
                record = run_plan(
                    plan,
                    history,
                    trigger=trigger,
                    reporter=_run_reporter(plan.name, reporter),
                    stop=stop,
                    on_finished=on_finished,
                )
            except Interrupted:
                return "interrupted"
            except BlockvaultError as exc:  # not run at all (running already elsewhere)
                return f"failed: {exc}"
            return record.status + (f": {record.error}" if record.error else "")

        # the runner ends a run past the plan's timeout itself; the scheduler's stop,
        # a grace later, is for a run that would not end
        timeout = None if plan.timeout is None else timedelta(seconds=plan.timeout) + TIMEOUT_GRACE
        return Job(
            plan.name,
            schedule,
            run,
            timeout=timeout,
            jitter=job_jitter(self.host, plan.name, schedule, self.jitter_max),
        )

    def _record_skipped(self, plan: str, trigger: Trigger, due: datetime) -> None:
        record = self.history.start(plan, trigger)
        most = self.scheduler.limits.max_start_delay
        self.history.finish(
            replace(
                record,
                status="skipped",
                error=f"{SKIPPED_WHY} {most} of {due:%Y-%m-%d %H:%M:%S} UTC "
                "(other runs held the concurrency limit)",
            )
        )

    def _summary(self, book: PlanBook) -> str:
        extra = list(self.extra_plans()) if self.extra_plans is not None else []
        plans = [*book.plans.values(), *extra]
        enabled = [p.name for p in plans if p.enabled]
        text = f"{len(enabled)} enabled of {len(plans)} plans"
        return text + (f" ({len(extra)} from elsewhere)" if extra else "")


TIMEOUT_GRACE: Final = timedelta(minutes=2)


CHECK_SUFFIX: Final = ":check"


def _stopping_reporter(stop: threading.Event, name: str, reporter: Reporter) -> Reporter:
    """``_run_reporter`` that also ends the task at its next event once ``stop`` is
    set (events come from the calling thread, so this unwinds it like a signal)."""
    forward = _run_reporter(name, reporter)

    def report(event: Event) -> None:
        forward(event)
        if stop.is_set():
            raise Interrupted("SIGTERM", signal.SIGTERM)

    return report


def _run_reporter(plan: str, reporter: Reporter) -> Reporter:
    """What a background run tells the agent's log: its warnings and notes, not its
    progress (that is in the run's own log)."""

    def report(event: Event) -> None:
        if isinstance(event, Warned):
            reporter(Warned(f"plan {plan}: {event.message}"))
        elif isinstance(event, Noted):
            reporter(Noted(f"plan {plan}: {event.message}"))

    return report
