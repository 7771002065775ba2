"""Alerts: when the agent (or ``plan run``) tells a plan's targets.

``Alerts`` reads the plans file each time it speaks, so a target or ``[smtp]`` change
takes effect without a restart, and a notice goes out as the file says *now*. After
each run ``on_finished`` tells what the run means (plans/notify.py ``events``); every
``check_overdue`` asks each enabled plan's status (plans/status.py) and tells the
plans that *became* overdue since the last check, once per episode. Nothing here
raises into a run: a plans file that cannot be read is a warning.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from blockvault.errors import BlockvaultError
from blockvault.events import Reporter, Warned
from blockvault.plans.model import Plan, RunRecord
from blockvault.plans.notify import (
    Delivery,
    Notifier,
    Overdue,
    OverdueLatch,
    Sleep,
    deliver,
    events,
    notifier_for,
    smtp_settings,
)
from blockvault.plans.status import OVERDUE_FACTOR, plan_status
from blockvault.plans.store import History, PlanBook

__all__ = ["Alerts"]


class Alerts:
    def __init__(
        self,
        plans_file: Path,
        reporter: Reporter,
        *,
        host: str | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.plans_file = plans_file
        self.reporter = reporter
        self.host = host
        self._sleep = sleep
        self._latch = OverdueLatch()
        self._lock = threading.Lock()  # runs finish in threads; one check at a time

    def on_finished(self, current: RunRecord, previous: RunRecord | None) -> None:
        """The runner's ``on_finished``: tell ``current``'s plan's targets."""
        book = self._book()
        if book is None or current.plan not in book.plans:
            return
        notifiers = self._notifiers(book, book.plans[current.plan])
        if previous is not None and previous.status in ("interrupted", "skipped"):
            previous = self._last_ended(current) or previous
        with self._lock:
            # a good check says nothing of how old the backups are
            good = current.status == "ok" and current.kind == "backup"
            was_overdue = good and self._latch.good_run(current.plan)
        for event in events(previous, current, None, host=self.host, was_overdue=was_overdue):
            deliver(event, notifiers, self.reporter)

    def _last_ended(self, current: RunRecord) -> RunRecord | None:
        """The plan's newest run before ``current`` that ended ok or failed: a failure,
        a shutdown mid-run or a skipped run, then a good run is a recovery."""
        history = History.beside(self.plans_file)
        runs = history.runs(current.plan, kind=current.kind)
        earlier = (r for r in runs if r.run_id < current.run_id)
        return next((r for r in earlier if r.status in ("ok", "failed")), None)

    def check_overdue(self, now: datetime | None = None) -> list[Delivery]:
        """Tell the plans that became overdue since the last check; what was sent."""
        now = now or datetime.now(UTC)
        book = self._book()
        if book is None:
            return []
        history = History.beside(self.plans_file)
        sent: list[Delivery] = []
        with self._lock:
            for plan in book.plans.values():
                if not plan.enabled or not plan.notify:
                    continue
                status = plan_status(plan, history, now)
                if not self._latch.became_overdue(plan.name, status.overdue):
                    continue
                good = status.last_good.ended if status.last_good else None
                late = Overdue(plan.name, good, now - status.period * OVERDUE_FACTOR)
                for event in events(status.last, None, late, host=self.host, now=now):
                    sent += deliver(event, self._notifiers(book, plan), self.reporter)
        return sent

    def watch(self, every: float = 60.0) -> Callable[[], None]:
        """Check for overdue plans every ``every`` seconds in a thread; the function
        returned stops it."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.check_overdue()
                except Exception as exc:  # an alert must never stop the agent
                    self.reporter(Warned(f"alerts: overdue check failed: {exc}"))

        thread = threading.Thread(target=loop, name="blockvault-overdue", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join()

        return halt

    def _book(self) -> PlanBook | None:
        try:
            return PlanBook.load(self.plans_file)
        except BlockvaultError as exc:
            self.reporter(Warned(f"alerts: no notices sent: {exc}"))
            return None

    def _notifiers(self, book: PlanBook, plan: Plan) -> list[Notifier]:
        """The plan's notifiers; a target that cannot be used (mail without ``[smtp]``)
        is a warning, and the others still speak."""
        table = book.settings.get("smtp")
        notifiers = []
        for target in plan.notify:
            try:
                smtp = smtp_settings(table) if isinstance(table, dict) else None
                notifiers.append(notifier_for(target, smtp, sleep=self._sleep))
            except BlockvaultError as exc:
                self.reporter(Warned(f"plan {plan.name}: no notice to {target}: {exc}"))
        return notifiers
