"""The agent's side of the link, piece by piece: the central plan cache (checked,
retention dropped, renamed), the acknowledgement watermark, backoff, and enrolment's
errors (unreachable center, wrong address)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from blockvault.center.link.http import HttpLink
from blockvault.center.link.identity import AgentKey, Enrolment, enrolment_file
from blockvault.center.link.loop import BACKOFF_MOST, AgentLink, backoff
from blockvault.center.link.plans import CentralPlans, central_plans_file
from blockvault.center.tls import self_signed
from blockvault.events import quiet
from blockvault.plans.store import History
from blockvault_demo.servers import free_port
from tests.conftest import blockvault

PLAN = {"disk": "/dev/vdb", "repo": "/srv/repo", "schedule": "every 1h"}


def test_central_plans_are_checked_renamed_and_never_prune(tmp_path: Path) -> None:
    cache = CentralPlans(central_plans_file(tmp_path / "plans.toml"))
    assert cache.version() is None and cache.plans() == []
    sent = [
        {"id": 1, "name": "nightly", "spec": {**PLAN, "keep": {"last": 3}}},
        {"id": 2, "name": "broken", "spec": {**PLAN, "schedule": "now and then"}},
        {"id": 3, "name": "../evil", "spec": PLAN},
        {"id": 4},
    ]
    problems = cache.store("v1", sent)
    assert len(problems) == 3 and any("plan broken" in p for p in problems)
    (plan,) = cache.plans()
    assert plan.name == "center:nightly" and plan.retention is None and plan.repo == "/srv/repo"
    assert cache.version() == "v1"
    assert cache.path == tmp_path / "plans.central.json"
    assert cache.path.stat().st_mode & 0o077 == 0
    cache.path.write_text("[not json")  # damaged: nothing runs, nothing raises
    assert cache.plans() == [] and cache.version() is None


def test_the_watermark_stops_at_a_run_still_going_or_not_acknowledged(tmp_path: Path) -> None:
    plans = tmp_path / "plans.toml"
    history = History.beside(plans)
    now = datetime.now(UTC)
    first = history.finish(replace(history.start("a", "schedule", now=now), status="ok"), now=now)
    going = history.start("b", "schedule", now=now)
    third = history.finish(replace(history.start("a", "schedule", now=now), status="ok"), now=now)
    enrolment = Enrolment("https://127.0.0.1:1", "SHA256:x", _certificate(), "h", 1)
    link = AgentLink(
        plans,
        enrolment,
        HttpLink(enrolment, AgentKey.generate()),
        reporter=quiet,
        agent_version="0",
    )
    runs = history.after(0, 100)
    link._acknowledged(runs, {first.run_id, third.run_id})
    assert link.enrolment.reported_through == first.run_id
    assert Enrolment.load(enrolment_file(plans)) == link.enrolment  # kept across restarts
    history.finish(replace(going, status="failed", error="x"), now=now)
    link._acknowledged(history.after(first.run_id, 100), {going.run_id, third.run_id})
    assert link.enrolment.reported_through == third.run_id
    link.client.close()


def test_backoff_doubles_to_a_ceiling_with_jitter() -> None:
    for failures, ceiling in ((1, 2.0), (2, 4.0), (5, 32.0), (50, BACKOFF_MOST)):
        waits = [backoff(failures) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1  # a fleet does not retry in step


def test_enrol_errors_are_one_line(tmp_path: Path) -> None:
    env = {"BLOCKVAULT_PLANS": str(tmp_path / "plans.toml")}
    args = ["--token", "enrol_x", "--fingerprint", "SHA256:x", "--name", "web1"]
    closed = f"https://127.0.0.1:{free_port()}"
    down = blockvault("agent", "enrol", closed, *args, env=env)
    assert down.returncode == 1 and down.stderr.count("\n") == 1
    assert f"cannot reach the center at {closed}" in down.stderr
    plain = blockvault("agent", "enrol", "http://center:8443", *args, env=env)
    assert plain.returncode == 2 and "https://HOST[:PORT]" in plain.stderr
    named = blockvault("agent", "enrol", closed, *args[:4], "--name", "a/b", env=env)
    assert named.returncode == 2 and "--name 'a/b'" in named.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no key, no enrolment


def _certificate() -> str:
    """A real self-signed certificate (PEM), as ``center init`` makes them."""
    certificate, _key = self_signed(["center.test"])
    return certificate.decode()
