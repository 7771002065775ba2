"""Prometheus metrics of the plans, read from the plans file and the history at
each scrape: nothing is counted in memory, so a restarted agent (or one that never
ran a plan itself) serves the same numbers ``blockvault status`` shows.

Every metric has the label ``plan``. Times are Unix seconds; a plan that never had a
good run has no ``last_success`` sample (absent, not 0: an alert on its age then
fires on ``overdue``). ``failures_total`` counts the failed runs the history keeps
(the last ``KEEP_RUNS`` of each plan), so it falls when old rows are trimmed: rate
queries see that as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from blockvault.errors import UsageError
from blockvault.plans.status import plan_status
from blockvault.plans.store import KEEP_RUNS, History, PlanBook

__all__ = ["PlansCollector", "parse_address", "serve_metrics"]

PREFIX: Final = "blockvault_plan"


class PlansCollector(Collector):
    """One scrape: each plan of the file with its history (plans/status.py)."""

    def __init__(self, plans_file: Path, *, now: Callable[[], datetime] | None = None) -> None:
        self.plans_file = plans_file
        self._now = now or (lambda: datetime.now(UTC))

    def collect(self) -> Iterator[Metric]:
        book = PlanBook.load(self.plans_file)  # an error fails this scrape: up == 0
        history = History.beside(self.plans_file)
        now = self._now()

        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["plan"])

        enabled = gauge("enabled", "1 when the plan runs on its schedule.")
        running = gauge("running", "1 while a run of the plan is under way.")
        overdue = gauge("overdue", "1 when the last good run is older than 1.25 periods.")
        period = gauge("period_seconds", "The schedule's longest gap between runs.")
        success = gauge("last_success_timestamp_seconds", "When the last good run ended.")
        last_end = gauge("last_run_timestamp_seconds", "When the last run ended.")
        last_ok = gauge("last_run_success", "1 when the last run ended ok, else 0.")
        duration = gauge("last_run_duration_seconds", "How long the last run took.")
        sizes = GaugeMetricFamily(
            f"{PREFIX}_last_run_bytes",
            "Bytes of the last run: read from the source, new to the repository, stored.",
            labels=["plan", "kind"],
        )
        streak = gauge("consecutive_failures", "Failed runs since the last good one.")
        failures = CounterMetricFamily(
            f"{PREFIX}_failures",
            f"Failed runs among the last {KEEP_RUNS} the history keeps.",
            labels=["plan"],
        )
        skips = CounterMetricFamily(
            f"{PREFIX}_skipped",
            f"Runs skipped (never started: the concurrency limit) among the last {KEEP_RUNS}.",
            labels=["plan"],
        )
        for plan in book.plans.values():
            name = [plan.name]
            state = plan_status(plan, history, now)
            runs = history.runs(plan.name, kind="backup")
            enabled.add_metric(name, int(plan.enabled))
            running.add_metric(name, int(state.running is not None))
            overdue.add_metric(name, int(state.overdue))
            period.add_metric(name, state.period.total_seconds())
            if state.last_good is not None and state.last_good.ended is not None:
                success.add_metric(name, state.last_good.ended.timestamp())
            # the last run that ran: a skipped one has no time, bytes or result to show
            last = next((r for r in runs if r.status not in ("running", "skipped")), None)
            if last is not None and last.ended is not None and last.seconds is not None:
                last_end.add_metric(name, last.ended.timestamp())
                last_ok.add_metric(name, int(last.status == "ok"))
                duration.add_metric(name, last.seconds)
                for kind, value in (
                    ("read", last.bytes_read),
                    ("new", last.bytes_new),
                    ("stored", last.bytes_stored),
                ):
                    sizes.add_metric([plan.name, kind], value)
            ended = [r for r in runs if r.status != "running"]
            good = next((i for i, r in enumerate(ended) if r.status == "ok"), len(ended))
            streak.add_metric(name, sum(r.status == "failed" for r in ended[:good]))
            failures.add_metric(name, sum(r.status == "failed" for r in runs))
            skips.add_metric(name, sum(r.status == "skipped" for r in runs))
        yield from (enabled, running, overdue, period, success, last_end, last_ok)
        yield from (duration, sizes, streak, failures, skips)


def parse_address(
    text: str, what: str = "--metrics", example: str = "127.0.0.1:9750"
) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of ``--metrics`` (or ``what``);
    ``UsageError``."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} {text}: give HOST:PORT, such as {example}")
    return host, int(port)


def serve_metrics(plans_file: Path, address: str) -> Callable[[], None]:
    """Serve the plans' metrics over HTTP on ``address`` (``HOST:PORT``: keep it on
    loopback or a management network; there is no authentication) in a thread; the
    function returned stops the server. ``UsageError`` when the address cannot be
    bound."""
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlansCollector(plans_file))
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        raise UsageError(f"--metrics {address}: {exc.strerror or exc}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
