"""A plan's scheduled check (``check --read-data --subset``) as a run of its own kind:
recorded in the plan's history with what it read and the damage it found, and told to
the plan's notify targets like a backup. A real repository holding a real backup of
a disk made by sfdisk and mkfs, one flipped byte in one chunk, and a real webhook
receiver on loopback (tests/conftest.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from blockvault.events import quiet
from blockvault.plans.alerts import Alerts
from blockvault.plans.model import CheckSpec, Plan
from blockvault.plans.runner import run_check
from blockvault.plans.status import plan_status
from blockvault.plans.store import History, PlanBook
from blockvault.repo import format as fmt
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.cli.runner import ok, run
from tests.conftest import Hook, need_tools

MiB = 1024 * 1024


def test_a_check_is_recorded_and_a_failed_one_notifies(hook: Hook, tmp_path: Path) -> None:
    need_tools("sfdisk", "mkfs.ext4")
    make_tree(tmp_path / "tree", 2 * MiB, seed=16)
    spec = DiskSpec("gpt", 40 * MiB, [PartitionSpec("ext4", 34 * MiB, "", tmp_path / "tree")])
    disk = build_disk(spec, tmp_path / "disk.img")
    repo = tmp_path / "repo"
    ok(run("-r", repo, "init"))
    ok(run("-r", repo, "backup", disk.path))
    plans_file = tmp_path / "plans.toml"
    plan = Plan(
        "nightly",
        str(repo),
        "disk",
        (str(disk.path),),
        "daily 02:00",
        check=CheckSpec("weekly", subset=100),
        notify=(hook.url,),
    )
    PlanBook(plans_file, {plan.name: plan}).save()
    history = History.beside(plans_file)
    alerts = Alerts(plans_file, quiet, host="alpha")

    clean = run_check(
        plan, history, trigger="schedule", reporter=quiet, on_finished=alerts.on_finished
    )
    assert (clean.kind, clean.status, clean.error, clean.snapshot) == ("check", "ok", None, None)
    assert clean.bytes_read > 0
    assert hook.bodies == []  # a good check is not this target's (success is opt-in)

    chunks = sorted(p for p in (repo / fmt.DATA_DIR).rglob("*") if p.is_file())
    damaged = bytearray(chunks[len(chunks) // 2].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    chunks[len(chunks) // 2].write_bytes(bytes(damaged))
    bad = run_check(
        plan, history, trigger="schedule", reporter=quiet, on_finished=alerts.on_finished
    )
    assert bad.kind == "check" and bad.status == "failed"
    assert bad.error is not None and bad.error.startswith("1 problem (damaged: "), bad.error
    (body,) = (json.loads(raw) for _, raw in hook.bodies)
    assert body["event"] == "failure" and body["run_id"] == bad.run_id
    assert body["kind"] == "check" and body["error"] == bad.error
    assert body["message"] == "[blockvault] nightly on alpha: repository check FAILED"

    # the plan's history shows both; its backup status is not the checks'
    assert [(r.kind, r.status) for r in history.runs(plan.name)] == [
        ("check", "failed"),
        ("check", "ok"),
    ]
    state = plan_status(plan, history, bad.started)
    assert state.last is None and state.last_good is None  # no backup has run
    assert history.last(plan.name, kind="check") == bad


def test_a_history_from_before_checks_and_skips_is_read(tmp_path: Path) -> None:
    """A database written by the version before: no ``kind`` column, and skipped runs
    recorded as failed. It opens, its rows read as what they were, and new runs go in."""
    path = tmp_path / "plans.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    rows = [
        ("nightly", "schedule", "ok", "2026-03-01T02:00:00+00:00", None),
        ("nightly", "schedule", "failed", "2026-03-02T02:00:00+00:00", OLD_SKIP),
    ]
    db.executemany(
        "INSERT INTO runs (plan, trigger, status, started, ended, error) VALUES (?, ?, ?, ?, ?, ?)",
        [(p, t, s, start, start, e) for p, t, s, start, e in rows],
    )
    db.commit()
    db.close()
    history = History(path)
    runs = history.runs("nightly")
    assert [(r.kind, r.status) for r in runs] == [("backup", "skipped"), ("backup", "ok")]
    assert runs[0].error == OLD_SKIP.removeprefix("skipped: ")
    new = history.start("nightly", "manual", kind="check")
    assert history.running() == [new] and history.running("nightly") == []  # not a backup


OLD_SKIP = "skipped: could not start within 12:00:00 of 2026-03-02 02:00:00 UTC"
OLD_SCHEMA = """
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    bytes_read INTEGER NOT NULL DEFAULT 0,
    bytes_new INTEGER NOT NULL DEFAULT 0,
    bytes_stored INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT,
    error TEXT,
    log TEXT,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_plan ON runs (plan, run_id);
"""
