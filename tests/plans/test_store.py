"""The plans file and the history database on their own: round trips, what is kept
for other parts, bounds, and the trimming of old runs with their logs."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blockvault.errors import PlanError
from blockvault.plans.model import CheckSpec, Plan
from blockvault.plans.retention import Policy
from blockvault.plans.store import (
    MAX_PLANS_FILE,
    History,
    PlanBook,
    plan_from_table,
    plan_to_table,
)

PLANS = [
    Plan("a", "/srv/repo", "disk", ("/dev/sda",), "daily 02:00"),
    Plan(
        "b.2_x-y",
        "sftp://u@h:2222/r",
        "partition",
        ("/dev/sda1", "/dev/sda3"),
        "0 3 * * 1-5",
        window="Mon-Fri 01:00-05:00",
        retention=Policy(
            last=2, daily=7, weekly=4, monthly=12, yearly=3, hourly=1, within=timedelta(days=2)
        ),
        verify="source",
        check=CheckSpec("weekly sun 04:00", 25),
        pre="/bin/true 'a b'",
        post="/usr/bin/env",
        pre_failure="continue",
        notify=("mailto:ann@example.org", "http://127.0.0.1:9/hook"),
        enabled=False,
        timeout=5400,
        password_file="/etc/blockvault/pass",
    ),
    Plan(
        "sys",
        "s3://bucket/p",
        "system",
        (),
        "every 6h",
        retention=Policy(within=timedelta(hours=12)),
    ),
]


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_every_field_survives_the_table_and_the_file(plan: Plan, tmp_path: Path) -> None:
    assert plan_from_table(plan.name, plan_to_table(plan)) == plan
    path = tmp_path / "plans.toml"
    book = PlanBook(path, {})
    book.add(plan)
    book.save()
    assert PlanBook.load(path).get(plan.name) == plan


def test_other_tables_are_kept_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(
        '[smtp]\nhost = "mail.example.org"\nport = 587\nsecurity = "starttls"\n\n'
        "[agent]\nconcurrency = 2\n\n"
        '[plan.a]\nrepo = "/r"\ndisk = "/dev/sda"\nschedule = "daily"\n'
    )
    with PlanBook.editing(path) as book:
        book.add(PLANS[2])
    document = tomllib.loads(path.read_text())
    assert document["smtp"] == {"host": "mail.example.org", "port": 587, "security": "starttls"}
    assert document["agent"] == {"concurrency": 2}
    assert list(document["plan"]) == ["a", "sys"]


def test_an_editing_block_that_fails_saves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    with pytest.raises(PlanError, match="already exists"), PlanBook.editing(path) as book:
        book.add(PLANS[0])
        book.add(PLANS[0])
    assert not path.exists()


def test_a_huge_plans_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_bytes(b"#" * (MAX_PLANS_FILE + 1))
    with pytest.raises(PlanError, match="larger than"):
        PlanBook.load(path)


def test_old_runs_are_removed_with_their_logs(tmp_path: Path) -> None:
    history = History(tmp_path / "plans.db", keep_runs=3)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = []
    for n in range(5):
        record = history.start("a", "schedule", now=start + timedelta(days=n))
        assert record.log is not None
        Path(record.log).parent.mkdir(exist_ok=True)
        Path(record.log).write_text("log\n")
        records.append(
            history.finish(replace(record, status="ok"), now=start + timedelta(days=n, hours=1))
        )
    other = history.start("b", "manual")  # another plan's rows are not counted
    kept = history.runs("a")
    assert [r.run_id for r in kept] == [r.run_id for r in reversed(records[2:])]
    assert sorted(p.name for p in history.logs.iterdir()) == sorted(
        Path(r.log or "").name for r in records[2:]
    )
    assert history.running() == [other]
    assert kept[0].ended == start + timedelta(days=4, hours=1)


def test_a_damaged_history_database_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"
    path.write_bytes(b"not a database, " * 1000)
    with pytest.raises(PlanError, match=f"history database {path}: file is not a database"):
        History(path)
