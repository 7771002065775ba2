"""How each plan stands: its last result, its last good run, its next run, overdue.

A plan is **overdue** when its last good run ended more than ``OVERDUE_FACTOR`` times
its schedule's period ago (the longest gap between two fire times): one missed run
of a daily plan is not yet overdue at 25 hours, two are. A plan that never had a good
run is overdue once its first recorded run is that old; one never run at all is not
(it may just have been added). Pure: the caller passes ``now``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from blockvault.plans.model import Plan, RunRecord
from blockvault.plans.schedule import fire_time, parse_schedule
from blockvault.plans.store import History, Reckoning

__all__ = ["OVERDUE_FACTOR", "PlanStatus", "plan_status"]

OVERDUE_FACTOR: Final = 1.25


@dataclass(frozen=True)
class PlanStatus:
    plan: Plan
    last: RunRecord | None  # the newest ended run
    last_good: RunRecord | None  # the newest run that ended ok
    running: RunRecord | None  # a run under way now
    period: timedelta  # the schedule's longest gap between fire times
    next_run: datetime | None  # None when the plan is disabled
    overdue: bool

    def good_age(self, now: datetime) -> timedelta | None:
        """How old the last good snapshot is (from the end of its run)."""
        if self.last_good is None or self.last_good.ended is None:
            return None
        return now - self.last_good.ended


def agent_reckoning(history: History, plan: str) -> tuple[datetime | None, timedelta]:
    """When the agent last fired ``plan`` and the jitter it gives it (None and 0 when
    no agent ever ran it, or its tables cannot be read: status still answers)."""
    try:
        reckoning = Reckoning(history.path)
        try:
            return reckoning.get(plan), reckoning.jitter(plan)
        finally:
            reckoning.close()
    except sqlite3.Error:
        return None, timedelta(0)


def plan_status(plan: Plan, history: History, now: datetime) -> PlanStatus:
    schedule = parse_schedule(plan.schedule, plan.window)
    period = schedule.period
    last, last_good = history.last(plan.name), history.last_good(plan.name)
    running = history.running(plan.name)
    next_run = None
    if plan.enabled:
        # what the agent reckons from (when the plan last fired) and its jitter; a run
        # under way covers every slot until it started. Without the agent's word: the
        # last start, so a missed fire time shows as due (in the past)
        fired, jitter = agent_reckoning(history, plan.name)
        started = running[-1].started if running else None
        known = [moment for moment in (fired, started) if moment is not None]
        since = max(known) if known else last.started if last else now
        next_run = fire_time(schedule, schedule.next_after(since), jitter)
    limit = period * OVERDUE_FACTOR
    if last_good is not None and last_good.ended is not None:
        overdue = now - last_good.ended > limit
    else:
        oldest = history.runs(plan.name, limit=1, oldest_first=True, kind="backup")
        overdue = bool(oldest) and now - oldest[0].started > limit
    return PlanStatus(
        plan, last, last_good, running[-1] if running else None, period, next_run, overdue
    )
