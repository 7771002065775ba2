"""``blockvault agent``: the daemon that runs the plans on their schedules.

A click group whose own action is the daemon, so that ``agent install`` (the systemd
unit) can be a subcommand beside it. Signals are handled here, not by the library:
SIGTERM and SIGINT stop the agent (a running backup stops safely and is recorded
interrupted; exit 128 + signal), SIGHUP reloads the plans file.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import click

from blockvault import __version__
from blockvault.cli.commands import agent_enrol, agent_install, plans_file
from blockvault.cli.commands.disks import disk_documents
from blockvault.errors import BlockvaultError, Interrupted, UsageError
from blockvault.events import Event, Noted, Reporter, Warned
from blockvault.plans.agent import DEFAULT_LIMITS, Agent, Limits
from blockvault.plans.alerts import Alerts
from blockvault.plans.metrics import serve_metrics
from blockvault.plans.schedule import RealClock
from blockvault.text import plural, shown

if TYPE_CHECKING:
    from blockvault.center.link.loop import AgentLink


def register(group: click.Group) -> None:
    @group.group(invoke_without_command=True)
    @click.option(
        "--log-file",
        type=click.Path(dir_okay=False, writable=True),
        metavar="FILE",
        help="Append the agent's log to FILE. Default: stderr (the journal under systemd).",
    )
    @click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=DEFAULT_LIMITS.concurrency,
        show_default=True,
        help="Runs at once, all plans together.",
    )
    @click.option(
        "--jitter",
        type=click.FloatRange(min=0),
        default=300.0,
        show_default=True,
        metavar="SECONDS",
        help="Most a plan's runs are delayed after each fire time, by an amount fixed for "
        "this machine and plan (spreads a fleet's 02:00); at most a tenth of the period.",
    )
    @click.option(
        "--startup-delay",
        type=click.FloatRange(min=0),
        default=DEFAULT_LIMITS.startup_delay.total_seconds(),
        show_default=True,
        metavar="SECONDS",
        help="Wait this long after start before running plans whose time passed while "
        "the agent was down (each runs once).",
    )
    @click.option(
        "--max-start-delay",
        type=click.FloatRange(min=0),
        default=(DEFAULT_LIMITS.max_start_delay or timedelta(0)).total_seconds(),
        show_default=True,
        metavar="SECONDS",
        help="A run that could not start this long after it was due (the concurrency "
        "limit) is skipped and recorded; 0: wait as long as it takes.",
    )
    @click.option(
        "--metrics",
        metavar="HOST:PORT",
        help="Serve Prometheus metrics of the plans there, such as 127.0.0.1:9750 (no "
        "authentication: keep it on loopback or a management network).",
    )
    @click.pass_context
    def agent(
        ctx: click.Context,
        log_file: str | None,
        concurrency: int,
        jitter: float,
        startup_delay: float,
        max_start_delay: float,
        metrics: str | None,
    ) -> None:
        """Run the plans on their schedules, in the foreground, until SIGTERM.

        A plan whose time passed while the agent was down runs once, after the
        start-up delay; a plan never runs beside itself. SIGHUP reloads the plans
        file. SIGTERM stops running backups safely (recorded interrupted; they run
        again at the next start) and exits 143."""
        if ctx.invoked_subcommand is not None:
            return
        limits = Limits(
            concurrency=concurrency,
            startup_delay=timedelta(seconds=startup_delay),
            max_start_delay=timedelta(seconds=max_start_delay) if max_start_delay else None,
        )
        log = _open_log(log_file)
        reporter = _log_reporter(log)
        alerts = Alerts(plans_file(ctx), reporter)  # after each run, and when overdue
        link = _center_link(plans_file(ctx), reporter)
        daemon = Agent(
            plans_file(ctx),
            clock=RealClock(),
            limits=limits,
            jitter_max=timedelta(seconds=jitter),
            reporter=reporter,
            on_finished=alerts.on_finished,
            extra_plans=link.plans if link is not None else None,
        )
        stop_metrics = serve_metrics(plans_file(ctx), metrics) if metrics else None
        stopped_by: list[signal.Signals] = []
        runs_stopped: list[int] = []

        def on_stop(number: int, frame: FrameType | None) -> None:
            if stopped_by:  # asked twice: stop now, as the default action would
                signal.signal(number, signal.SIG_DFL)
                os.kill(os.getpid(), number)
            stopped_by.append(signal.Signals(number))
            runs_stopped.append(daemon.stop())

        def on_reload(number: int, frame: FrameType | None) -> None:
            daemon.request_reload()

        signal.set_wakeup_fd(daemon.scheduler.alarm.signal_fd)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)
        stop_watching = alerts.watch()
        if link is not None:
            link.on_plans = daemon.request_reload  # new central plans: reload, as SIGHUP
            link.start()
        try:
            daemon.serve()
        finally:
            stop_watching()
            if link is not None:
                link.stop()
            if stop_metrics is not None:
                stop_metrics()
        if stopped_by:
            interrupted = Interrupted(stopped_by[0].name, stopped_by[0].value)
            stopped = runs_stopped[0]
            interrupted.outcome = (
                f"the agent stopped {plural(stopped, 'running plan')} (recorded interrupted; "
                "each runs again at the next start)"
                if stopped
                else "the agent stopped; no plan was running"
            )
            raise interrupted

    agent_install.register(agent)
    agent_enrol.register(agent)


def _center_link(plans: Path, reporter: Reporter) -> AgentLink | None:
    """The link to the center this agent enrolled with (None: not enrolled). A link
    that cannot be opened is reported; the agent runs its local plans regardless."""
    from blockvault.center.link.loop import open_link  # httpx: only for the daemon

    try:
        return open_link(plans, reporter=reporter, agent_version=__version__, disks=disk_documents)
    except BlockvaultError as exc:
        reporter(Warned(f"center: not connecting: {exc}"))
        return None


def _open_log(path: str | None) -> TextIO:
    if path is None:
        return sys.stderr
    try:
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError as exc:
        raise UsageError(f"--log-file {path}: {exc.strerror or exc}") from None


def _log_reporter(out: TextIO) -> Reporter:
    def report(event: Event) -> None:
        if isinstance(event, Noted | Warned):
            level = "warning: " if isinstance(event, Warned) else ""
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            out.write(f"{stamp} blockvault agent: {level}{shown(event.message)}\n")
            out.flush()

    return report
