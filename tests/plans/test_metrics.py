"""The agent's Prometheus endpoint, scraped over HTTP from a real server on loopback:
the numbers are those written into a real history database (plans/store.py), and
the text is read back by Prometheus' own exposition parser."""

from __future__ import annotations

import datetime as dt
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from blockvault.errors import UsageError
from blockvault.plans.metrics import parse_address, serve_metrics
from blockvault.plans.model import Plan
from blockvault.plans.store import History, PlanBook
from blockvault_demo.servers import free_port

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def plan(name: str, **more: object) -> Plan:
    return Plan(
        name=name,
        repo="/srv/repo",
        source_kind="disk",
        sources=("/dev/sdz",),
        schedule="daily 02:00",
        **more,  # type: ignore[arg-type]
    )


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("blockvault_plan")
    }


def test_metrics_show_the_history(tmp_path: Path) -> None:
    plans_file = tmp_path / "plans.toml"
    PlanBook(plans_file, {"root": plan("root"), "data": plan("data", enabled=False)}).save()
    history = History.beside(plans_file)

    def one_run(
        name: str, status: str, hours_ago: float, seconds: int, size: int, error: str | None = None
    ) -> None:
        start = NOW - dt.timedelta(hours=hours_ago)
        record = history.start(name, "schedule", now=start)
        history.finish(
            replace(
                record,
                status=status,  # type: ignore[arg-type]
                ended=start + dt.timedelta(seconds=seconds),
                bytes_read=size,
                bytes_new=size // 2,
                bytes_stored=size // 3,
                error=error or (None if status == "ok" else "device /dev/sdz: gone"),
            )
        )

    one_run("root", "failed", 75, 5, 0)
    one_run("root", "ok", 50, 600, 9_000_000)
    one_run("root", "failed", 26, 7, 3)
    one_run("root", "failed", 2, 42, 1_234_567)
    # skipped runs never ran: not failures, and not the last run the gauges describe;
    # the first as blockvault wrote it before "skipped" was a status of its own
    one_run("root", "failed", 1.5, 0, 0, "skipped: could not start within 12:00:00 of …")
    one_run("root", "skipped", 1, 0, 0, "could not start within 12:00:00 of …")
    one_run("data", "ok", 1, 30, 600)

    address = f"127.0.0.1:{free_port()}"
    stop = serve_metrics(plans_file, address)
    try:
        got = scrape(address)
    finally:
        stop()

    def value(name: str, plan: str, **labels: str) -> float | None:
        key = tuple(sorted({"plan": plan, **labels}.items()))
        return got.get((f"blockvault_plan_{name}", key))

    good_end = NOW - dt.timedelta(hours=50) + dt.timedelta(seconds=600)
    last_end = NOW - dt.timedelta(hours=2) + dt.timedelta(seconds=42)
    assert value("last_success_timestamp_seconds", "root") == good_end.timestamp()
    assert value("last_run_timestamp_seconds", "root") == last_end.timestamp()
    assert value("last_run_duration_seconds", "root") == 42
    assert value("last_run_success", "root") == 0
    assert value("last_run_bytes", "root", kind="read") == 1_234_567
    assert value("last_run_bytes", "root", kind="new") == 617_283
    assert value("last_run_bytes", "root", kind="stored") == 411_522
    assert value("failures_total", "root") == 3
    assert value("consecutive_failures", "root") == 2
    assert value("skipped_total", "root") == 2 and value("skipped_total", "data") == 0
    assert value("overdue", "root") == 1  # 50 h > 1.25 days
    assert value("period_seconds", "root") == 86400
    assert value("enabled", "root") == 1 and value("enabled", "data") == 0
    assert value("overdue", "data") == 0 and value("failures_total", "data") == 0
    assert value("last_run_bytes", "data", kind="read") == 600
    assert value("running", "root") == 0


def test_a_plan_never_run_has_no_success_time(tmp_path: Path) -> None:
    plans_file = tmp_path / "plans.toml"
    PlanBook(plans_file, {"new": plan("new")}).save()
    address = f"127.0.0.1:{free_port()}"
    stop = serve_metrics(plans_file, address)
    try:
        got = scrape(address)
    finally:
        stop()
    names = {name for name, _ in got}
    assert "blockvault_plan_last_success_timestamp_seconds" not in names
    assert got[("blockvault_plan_overdue", (("plan", "new"),))] == 0


@pytest.mark.parametrize("text", ["9750", "localhost", "127.0.0.1:", "127.0.0.1:99999", ":80"])
def test_bad_metrics_address(text: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_address(text)


def test_metrics_address_in_use_is_one_clear_error(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    stop = serve_metrics(tmp_path / "plans.toml", address)
    try:
        with pytest.raises(UsageError, match=f"--metrics {address}: Address already in use"):
            serve_metrics(tmp_path / "plans.toml", address)
    finally:
        stop()
    assert parse_address("[::1]:9750") == ("::1", 9750)
