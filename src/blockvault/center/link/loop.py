"""The enrolled agent's side of the link: a thread that sends a heartbeat every
interval the center asks for, and one that takes the center's jobs.

A heartbeat carries the inventory (OS, agent version, disks as ``blockvault disks
--json`` has them, every plan with its next run) and the runs of the history the
center has not acknowledged; its reply brings the central plans when the agent's copy
is stale. When the center cannot be reached the agent goes on running every plan,
central ones from its cache, and retries with exponential backoff and jitter; the runs
it made meanwhile go at the next heartbeat that gets through. Nothing the center does
or fails to do stops the agent: every failure here is reported and retried.
"""

from __future__ import annotations

import contextlib
import importlib
import platform
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from blockvault.center.link.http import HttpLink
from blockvault.center.link.identity import AgentKey, Enrolment, enrolment_file, key_file
from blockvault.center.link.plans import CentralPlans, central_plans_file
from blockvault.errors import BlockvaultError, CenterRefused, CenterUnreachable
from blockvault.events import Noted, Reporter, Warned
from blockvault.plans.model import Plan, RunRecord
from blockvault.plans.status import plan_status
from blockvault.plans.store import History, PlanBook

__all__ = ["AgentLink", "backoff", "open_link"]

DEFAULT_INTERVAL: Final = 30.0  # seconds, until the center says otherwise
INTERVAL_RANGE: Final = (1.0, 3600.0)  # what the agent accepts from the center
BACKOFF_FIRST: Final = 2.0  # seconds before the first retry
BACKOFF_MOST: Final = 300.0
DISKS_EVERY: Final = 600.0  # seconds between two readings of the disks (slow, needs root)
RUNS_PER_HEARTBEAT: Final = 100


def backoff(failures: int, *, first: float = BACKOFF_FIRST, most: float = BACKOFF_MOST) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: doubling up to
    ``most``, each a random half to whole of that so a fleet does not retry in step."""
    ceiling: float = min(most, first * 2.0 ** max(failures - 1, 0))
    return float(ceiling * random.uniform(0.5, 1.0))


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text(errors="replace").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip().strip('"')[:200]
    return platform.platform(terse=True)[:200]


class AgentLink:
    """The link of the agent whose plans file is ``plans_file``. ``on_plans`` is
    called (from the link's thread) when a new set of central plans is cached;
    ``disks`` gives the disks as ``blockvault disks --json`` does."""

    def __init__(
        self,
        plans_file: Path,
        enrolment: Enrolment,
        client: HttpLink,
        *,
        reporter: Reporter,
        agent_version: str,
        on_plans: Callable[[], None] = lambda: None,
        disks: Callable[[], list[Any]] = list,
    ) -> None:
        self.plans_file = plans_file
        self.enrolment = enrolment
        self.client = client
        self.central = CentralPlans(central_plans_file(plans_file))
        self.history = History.beside(plans_file)
        self.reporter = reporter
        self.agent_version = agent_version
        self.on_plans = on_plans
        self._disks = disks
        self._disks_read: tuple[float, list[Any]] | None = None
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- running --------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat thread, and the jobs thread if this build has one."""
        self._threads = [threading.Thread(target=self._beat_forever, name="center-link")]
        jobs = _jobs_entry(self.plans_file)
        if jobs is not None:
            serve_jobs, context = jobs
            self._threads.append(
                threading.Thread(
                    target=self._guarded,
                    args=(serve_jobs, self.client, self.stop_event, context),
                    name="center-jobs",
                )
            )
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def stop(self, timeout: float = 10) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout)
        self.client.close()

    def plans(self) -> list[Plan]:
        """The cached central plans (what the agent runs beside its own)."""
        return self.central.plans()

    def _guarded(self, serve: Callable[..., None], *args: Any) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                serve(*args)
                return
            except Exception as exc:  # the jobs thread must not end the agent
                failures += 1
                self.reporter(Warned(f"center: the jobs link failed, retrying: {exc}"))
                self.stop_event.wait(backoff(failures))

    def _beat_forever(self) -> None:
        failures = 0
        interval = DEFAULT_INTERVAL
        while not self.stop_event.is_set():
            try:
                interval = self.beat()
            except (CenterUnreachable, CenterRefused) as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    self.reporter(Warned(f"center: {exc}; plans go on running, retrying"))
                self.stop_event.wait(backoff(failures))
                continue
            except Exception as exc:  # a bug, or a reply we cannot read: never crash
                failures += 1
                self.reporter(Warned(f"center: heartbeat failed ({exc!r}); retrying"))
                self.stop_event.wait(backoff(failures))
                continue
            if failures:
                self.reporter(Noted(f"center: reconnected to {self.enrolment.url}"))
            failures = 0
            self.stop_event.wait(interval)

    # --- one heartbeat --------------------------------------------------------------

    def beat(self) -> float:
        """Send one heartbeat and act on its reply; seconds until the next."""
        runs = self.history.after(self.enrolment.reported_through, RUNS_PER_HEARTBEAT)
        plans = self._all_plans()
        body = {
            "inventory": self.inventory(plans),
            "runs": [_run_document(r, plans) for r in runs if r.status != "running"],
            "plans_version": self.central.version(),
        }
        response = self.client.call("POST", "/agent/v1/heartbeat", json=body)
        if response.status_code != 200:
            raise CenterUnreachable(
                url=self.enrolment.url, detail=f"heartbeat answered HTTP {response.status_code}"
            )
        reply = response.json()
        if reply.get("plans") is not None:
            for problem in self.central.store(str(reply["plans_version"]), reply["plans"]):
                self.reporter(Warned(f"center: a central plan is left out: {problem}"))
            self.reporter(Noted(f"center: {len(reply['plans'])} central plans received"))
            self.on_plans()
        self._acknowledged(runs, {int(i) for i in reply.get("acked", [])})
        low, high = INTERVAL_RANGE
        return min(max(float(reply.get("interval", DEFAULT_INTERVAL)), low), high)

    def _acknowledged(self, runs: list[RunRecord], acked: set[int]) -> None:
        """Move the watermark over the runs the center holds, stopping at the first
        run still going or not acknowledged (it goes again next time)."""
        through = self.enrolment.reported_through
        for run in runs:
            if run.status == "running" or run.run_id not in acked:
                break
            through = run.run_id
        if through != self.enrolment.reported_through:
            self.enrolment = replace(self.enrolment, reported_through=through)
            self.enrolment.save(enrolment_file(self.plans_file))

    def _all_plans(self) -> list[Plan]:
        try:
            local = list(PlanBook.load(self.plans_file).plans.values())
        except BlockvaultError:
            local = []
        return local + self.central.plans()

    def inventory(self, plans: list[Plan]) -> dict[str, Any]:
        now = datetime.now(UTC)
        documents = []
        for plan in plans:
            try:
                status = plan_status(plan, self.history, now)
            except BlockvaultError:
                continue
            documents.append(
                {
                    "name": plan.name,
                    "source": plan.source_kind,
                    "repo": plan.repo,
                    "schedule": plan.schedule,
                    "enabled": plan.enabled,
                    "period_seconds": int(status.period.total_seconds()),
                    "next_run": status.next_run.isoformat() if status.next_run else None,
                    "last_status": status.last.status if status.last else None,
                    "overdue": status.overdue,
                }
            )
        return {
            "os": _os_name(),
            "hostname": platform.node()[:255],
            "agent_version": self.agent_version,
            "disks": self._read_disks(),
            "plans": documents,
        }

    def _read_disks(self) -> list[Any]:
        """The disks, read again every ``DISKS_EVERY`` seconds; after a failed reading
        (a device that vanished amid it) the last good one, and a retry next time."""
        clock = datetime.now(UTC).timestamp()
        if self._disks_read is None or clock - self._disks_read[0] > DISKS_EVERY:
            try:
                self._disks_read = (clock, self._disks())
            except Exception as exc:  # an odd device must not stop the heartbeats
                self.reporter(Warned(f"center: could not list the disks: {exc}"))
                return self._disks_read[1] if self._disks_read else []
        return self._disks_read[1]


def _run_document(run: RunRecord, plans: list[Plan]) -> dict[str, Any]:
    repos = {p.name: p.repo for p in plans}
    return {
        "id": run.run_id,
        "plan": run.plan,
        "kind": run.kind,
        "trigger": run.trigger,
        "status": run.status,
        "started": run.started.isoformat(),
        "ended": run.ended.isoformat() if run.ended else None,
        "bytes_read": run.bytes_read,
        "bytes_new": run.bytes_new,
        "bytes_stored": run.bytes_stored,
        "snapshot": run.snapshot,
        "repo": repos.get(run.plan),
        "error": (run.error or None) and run.error[:4096],
    }


def _jobs_entry(plans_file: Path) -> tuple[Callable[..., None], Any] | None:
    """``serve_jobs`` of ``blockvault.center.link.jobs`` (the jobs part of the center)
    and its context for this plans file, if this build has them."""
    try:
        module = importlib.import_module("blockvault.center.link.jobs")
    except ImportError:
        return None
    entry, context = getattr(module, "serve_jobs", None), getattr(module, "AgentContext", None)
    if not callable(entry) or context is None:
        return None
    return entry, context(plans=plans_file)


def open_link(
    plans_file: Path,
    *,
    reporter: Reporter,
    agent_version: str,
    on_plans: Callable[[], None] = lambda: None,
    disks: Callable[[], list[Any]] = list,
) -> AgentLink | None:
    """The link of an enrolled agent; None when this plans file's agent never enrolled."""
    enrolment = Enrolment.load(enrolment_file(plans_file))
    if enrolment is None:
        return None
    client = HttpLink(enrolment, AgentKey.load(key_file(plans_file)))
    return AgentLink(
        plans_file,
        enrolment,
        client,
        reporter=reporter,
        agent_version=agent_version,
        on_plans=on_plans,
        disks=disks,
    )
