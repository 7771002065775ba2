"""``blockvault status``: how every plan stands, overdue ones named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, plans_file
from blockvault.cli.commands.plan import record_json, when
from blockvault.plans.status import OVERDUE_FACTOR, PlanStatus, plan_status
from blockvault.plans.store import History, PlanBook


def register(group: click.Group) -> None:
    @group.command("status")
    @json_option
    @click.pass_context
    def status_command(ctx: click.Context, as_json: bool) -> None:
        """Each plan's last result, the age of its last good snapshot, its next run,
        and OVERDUE when the last good backup is older than 1.25 times the schedule's
        period."""
        path = plans_file(ctx)
        book = PlanBook.load(path)
        if not book.plans:
            if as_json:
                render.emit_json([])
            else:
                click.echo(f"no plans in {path}; add one with 'blockvault plan add'", err=True)
            return
        history = History.beside(path)
        history.interrupted_leftovers()
        now = datetime.now(UTC)
        states = [plan_status(plan, history, now) for plan in book.plans.values()]
        if as_json:
            render.emit_json([status_json(s, now) for s in states])
            return
        render.table(
            None,
            ["Plan", "Last run", "Result", "Last good", "Next run", "Overdue"],
            [
                (
                    s.plan.name,
                    when(s.last.started) if s.last else "never",
                    result_text(s),
                    age_text(s.good_age(now)),
                    next_text(s, now),
                    "OVERDUE" if s.overdue else "",
                )
                for s in states
            ],
        )
        overdue = [s.plan.name for s in states if s.overdue]
        if overdue:
            render.warn(
                f"overdue (no good backup for {OVERDUE_FACTOR}x the schedule's period): "
                + ", ".join(overdue)
            )


def result_text(state: PlanStatus) -> str:
    if state.running is not None:
        return f"running (run {state.running.run_id})"
    if state.last is None:
        return "-"
    return state.last.status + (f": {state.last.error}" if state.last.error else "")


def age_text(age: timedelta | None) -> str:
    if age is None:
        return "none"
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def next_text(state: PlanStatus, now: datetime) -> str:
    if state.next_run is None:
        return "disabled"
    return when(state.next_run) + (" (due)" if state.next_run <= now else "")


def status_json(state: PlanStatus, now: datetime) -> dict[str, Any]:
    age = state.good_age(now)
    return {
        "plan": state.plan.name,
        "enabled": state.plan.enabled,
        "last": record_json(state.last) if state.last else None,
        "last_good": record_json(state.last_good) if state.last_good else None,
        "last_good_age_seconds": None if age is None else int(age.total_seconds()),
        "running": record_json(state.running) if state.running else None,
        "next_run": state.next_run.isoformat() if state.next_run else None,
        "period_seconds": int(state.period.total_seconds()),
        "overdue": state.overdue,
    }
