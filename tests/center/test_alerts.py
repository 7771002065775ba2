"""Alerts against real receivers on loopback: an SMTP server (aiosmtpd) and a webhook
receiver (http.server), on SQLite and PostgreSQL. Hosts and runs are inserted as the
agent API records them; the workers' rounds run with a stepped center clock."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import select

from blockvault.center.alerting.conditions import evaluate
from blockvault.center.alerting.config import add_rule, add_target, set_smtp
from blockvault.center.alerting.delivery import SIGNATURE_HEADER, deliver
from blockvault.center.auth import CSRF_HEADER
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.fleet import ReportedRun, record_runs
from blockvault.center.link.plans import CENTRAL_PREFIX
from blockvault.center.models import (
    Alert,
    AlertDelivery,
    AlertTarget,
    Audit,
    CentralPlan,
    Group,
    Host,
    Repository,
    Setting,
)
from blockvault_demo.servers import free_port
from tests.center.conftest import SteppedClock, add_user, api_token, log_in
from tests.center.server import CenterServer
from tests.conftest import Hook, blockvault

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock(center: Center) -> SteppedClock:
    stepped = SteppedClock(T0)
    center.clock = stepped
    return stepped


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


@pytest.fixture
def mailbox(center: Center) -> Iterator[Mailbox]:
    """A real SMTP server on loopback, set as the center's SMTP server."""
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    with transaction(center.sessions) as session:
        set_smtp(
            session, {"host": "127.0.0.1", "port": port, "security": "none", "from": "bv@c.test"}
        )
    yield box
    controller.stop()


def add_host(center: Center, name: str, group: str | None = None) -> int:
    """A host as enrolment leaves it, heard from now."""
    with transaction(center.sessions) as session:
        group_id = None
        if group is not None:
            found = session.scalar(select(Group).where(Group.name == group))
            if found is None:
                found = Group(name=group)
                session.add(found)
                session.flush()
            group_id = found.id
        host = Host(
            name=name,
            group_id=group_id,
            public_key="A" * 44,
            enrolled=center.clock(),
            last_seen=center.clock(),
        )
        session.add(host)
        session.flush()
        return host.id


_run_ids = iter(range(1, 1_000_000))


def report_run(
    center: Center,
    host_id: int,
    status: str,
    plan: str = "nightly",
    kind: str = "backup",
    ended: datetime | None = None,
) -> None:
    """A heartbeat carrying one ended run, recorded as the agent API records it
    (``fleet.record_runs``: the agent's times, the center's ``received``)."""
    now = center.clock()
    ended = ended if ended is not None else now
    run = ReportedRun(
        id=next(_run_ids),
        plan=plan,
        kind=kind,
        trigger="schedule",
        status=status,
        started=ended - timedelta(minutes=5),
        ended=ended,
        error="disk /dev/sdb: read error at 4096" if status == "failed" else None,
    )
    with transaction(center.sessions) as session:
        host = session.get(Host, host_id)
        assert host is not None
        host.last_seen = now
        record_runs(session, host, [run], now)


def route(center: Center, event: str, name: str, address: str, **more: Any) -> None:
    group = more.pop("group", None)
    with transaction(center.sessions) as session:
        add_rule(session, event, add_target(session, name, address, **more), group)


def alerts(center: Center) -> list[Alert]:
    with center.sessions() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


def rounds(center: Center, clock: SteppedClock, count: int, minutes: float = 1) -> None:
    for _ in range(count):
        evaluate(center)
        deliver(center)
        clock.step(minutes=minutes)


def test_a_lasting_failure_is_one_mail_and_its_recovery_closes_it(
    center: Center, clock: SteppedClock, mailbox: Mailbox
) -> None:
    route(center, "run-failed", "ops", "mailto:ops@example.org")
    web1 = add_host(center, "web1")
    report_run(center, web1, "ok")
    rounds(center, clock, 3)
    assert alerts(center) == [] and mailbox.messages == []

    report_run(center, web1, "failed")
    for _ in range(30):  # the failure stays for half an hour: rounds keep finding it
        rounds(center, clock, 1)
        report_run(center, web1, "interrupted")  # says nothing either way
    assert len(mailbox.messages) == 1
    mail = mailbox.messages[0]
    assert mail["To"] == "ops@example.org" and mail["From"] == "bv@c.test"
    assert "ALERT run-failed" in mail["Subject"] and "web1" in mail["Subject"]
    assert "read error at 4096" in mail.get_content()
    [alert] = alerts(center)
    assert alert.closed is None and alert.notified is not None
    assert alert.condition == f"run-failed:host{web1}:nightly"

    report_run(center, web1, "ok")
    rounds(center, clock, 5)
    [alert] = alerts(center)
    assert alert.closed is not None
    assert len(mailbox.messages) == 2 and "RECOVERED run-failed" in mailbox.messages[1]["Subject"]

    report_run(center, web1, "failed")  # a new episode: a new alert, a new mail
    rounds(center, clock, 3)
    assert [a.closed is None for a in alerts(center)] == [False, True]
    assert len(mailbox.messages) == 3


def test_webhook_gets_signed_json_only_for_its_group(
    center: Center, clock: SteppedClock, hook: Hook
) -> None:
    secret = "s3cret-of-the-receiver"
    lab = add_host(center, "lab7", "lab")
    add_host(center, "desk1", "office")
    route(center, "host-offline", "lab-hook", hook.url, secret=secret, group="lab")
    rounds(center, clock, 15)
    assert hook.bodies == []  # heard from 14 minutes ago: not offline yet
    rounds(center, clock, 30)
    offline = [a for a in alerts(center) if a.event == "host-offline"]
    assert len(offline) == 2  # both hosts are offline; the rule routes the lab's only
    assert len(hook.bodies) == 1
    headers, raw = hook.bodies[0]
    expected = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    assert headers["Content-Type"] == "application/json"
    body = json.loads(raw)
    assert body["version"] == 1 and body["state"] == "open" and body["event"] == "host-offline"
    assert body["host"] == "lab7" and body["group"] == "lab"
    assert body["condition"] == f"host-offline:host{lab}"
    assert "offline" in body["message"]

    report_run(center, lab, "ok")  # heard from again
    rounds(center, clock, 1)
    assert len(hook.bodies) == 2
    assert json.loads(hook.bodies[1][1])["state"] == "recovered"


def test_overdue_by_the_centers_clock(center: Center, clock: SteppedClock, hook: Hook) -> None:
    route(center, "host-overdue", "hook", hook.url)
    web1 = add_host(center, "web1", "web")
    with transaction(center.sessions) as session:
        group = session.scalar(select(Group).where(Group.name == "web"))
        assert group is not None
        session.add(
            CentralPlan(
                name="nightly",
                group_id=group.id,
                spec={"schedule": "daily 02:00", "repo": "/srv/repo"},
                updated=clock(),
                updated_by="user:ada",
            )
        )
    nightly = CENTRAL_PREFIX + "nightly"  # as agents name a central plan's runs
    report_run(center, web1, "ok", nightly)

    def overdue() -> list[Alert]:
        return [a for a in alerts(center) if a.event == "host-overdue" and a.closed is None]

    clock.step(hours=29, minutes=50)  # a daily plan is overdue after 1.25 days: 30 h
    for _ in range(5):
        report_run(center, web1, "failed", nightly)  # heard from, but no good backup
        rounds(center, clock, 1)
    assert overdue() == []  # 29 h 54 min
    clock.step(minutes=10)
    rounds(center, clock, 20, minutes=30)
    [alert] = overdue()
    assert alert.condition == f"host-overdue:host{web1}:{nightly}"
    assert "is overdue (last good backup: 1d 6h ago)" in alert.message
    assert len(hook.bodies) == 1

    # a late report of an old good run is no recovery: the backup is as old as it says
    report_run(center, web1, "ok", nightly, ended=clock() - timedelta(days=2))
    rounds(center, clock, 3)
    assert len(overdue()) == 1
    # nor is a run that claims to end in the future: it counts from when it arrived
    # ... and that is now, so it is a recovery
    report_run(center, web1, "ok", nightly, ended=clock() + timedelta(days=30))
    rounds(center, clock, 1)
    assert overdue() == []
    clock.step(hours=29)
    rounds(center, clock, 1)
    assert overdue() == []  # counted from arrival: 29 h
    clock.step(hours=2)
    rounds(center, clock, 1)
    assert len(overdue()) == 1  # 31 h after arrival, whatever the agent's clock said

    with transaction(center.sessions) as session:
        session.add(Setting(key="overdue_factor", value=2.0))  # the center's setting
    rounds(center, clock, 1)
    assert overdue() == []  # 2 periods are allowed now


def test_repository_and_revocation_conditions(center: Center, clock: SteppedClock) -> None:
    web1 = add_host(center, "web1")
    with transaction(center.sessions) as session:
        session.add(Repository(name="big", location="/srv/big", free_bytes=5, capacity_bytes=100))
        session.add(Repository(name="roomy", location="/srv/r", free_bytes=50, capacity_bytes=100))
        session.add(Repository(name="bad", location="/srv/bad", last_check_ok=False))
    report_run(center, web1, "failed", plan="verify", kind="check")
    evaluate(center)
    keys = {a.condition: a.event for a in alerts(center)}
    assert set(keys.values()) == {"storage-full", "check-error"}
    assert f"check-error:host{web1}:verify" in keys and len(keys) == 3
    with transaction(center.sessions) as session:
        host = session.get(Host, web1)
        assert host is not None
        host.revoked = clock()
    evaluate(center)
    open_now = {a.event for a in alerts(center) if a.closed is None}
    assert open_now == {"storage-full", "check-error", "agent-revoked"}
    # a revoked host's own conditions are over: only its revocation stays
    [check] = [a for a in alerts(center) if a.host_id == web1 and a.event == "check-error"]
    assert check.closed is not None


def test_failed_sending_is_retried_with_backoff_never_stormed(
    center: Center, clock: SteppedClock, hook: Hook
) -> None:
    route(center, "run-failed", "hook", hook.url)
    web1 = add_host(center, "web1")
    report_run(center, web1, "failed")
    hook.answers = [500, 503]
    evaluate(center)
    assert [error is not None for _, error in deliver(center)] == [True]
    for _ in range(5):  # within the first minute's wait: nothing is sent again
        clock.step(seconds=10)
        assert deliver(center) == []
    clock.step(seconds=15)
    [(_, error)] = deliver(center)
    assert error is not None and "HTTP 503" in error
    clock.step(minutes=1)
    assert deliver(center) == []  # the second wait is two minutes
    clock.step(minutes=1, seconds=1)
    assert deliver(center)[0][1] is None
    for _ in range(20):
        clock.step(minutes=10)
        evaluate(center)
        assert deliver(center) == []
    assert len(hook.bodies) == 3  # two refused, one delivered: one alert, one message
    with center.sessions() as session:
        [row] = session.scalars(select(AlertDelivery))
        assert row.attempts == 3 and row.sent is not None and row.error is None

    with transaction(center.sessions) as session:  # a disabled target hears nothing
        [target] = session.scalars(select(AlertTarget))
        target.enabled = False
    report_run(center, web1, "ok")
    evaluate(center)  # recovered: a message is queued for the target that heard "open"
    assert deliver(center) == [] and len(hook.bodies) == 3


def test_the_test_button(center: Center, client: TestClient, hook: Hook) -> None:
    add_user(center, "ada", "admin")
    auth = {"Authorization": f"Bearer {api_token(center, 'ada', ['admin'])}"}
    dead = free_port()  # nothing listens here: the connection is refused
    smtp = {"smtp": {"host": "127.0.0.1", "port": dead, "security": "none", "from": "a@b.c"}}
    assert client.put("/api/v1/alert-smtp", json=smtp, headers=auth).json() == smtp
    made = client.post(
        "/api/v1/alert-targets", json={"name": "ops", "address": "mailto:o@x.org"}, headers=auth
    )
    assert made.status_code == 201
    answer = client.post(f"/api/v1/alert-targets/{made.json()['id']}/test", headers=auth).json()
    assert answer["ok"] is False
    assert "refused" in answer["error"] and f"127.0.0.1:{dead}" in answer["error"]
    assert "\n" not in answer["error"]

    made = client.post(
        "/api/v1/alert-targets",
        json={"name": "hook", "address": hook.url, "secret": "x" * 20},
        headers=auth,
    )
    answer = client.post(f"/api/v1/alert-targets/{made.json()['id']}/test", headers=auth).json()
    assert answer == {"ok": True, "error": None}
    [(headers, raw)] = hook.bodies
    assert json.loads(raw)["state"] == "test" and SIGNATURE_HEADER in headers
    assert "secret" not in made.json() and made.json()["signed"] is True


def test_api_targets_rules_and_alert_paging(
    center: Center, client: TestClient, clock: SteppedClock
) -> None:
    add_user(center, "ada", "admin")
    add_user(center, "vic", "viewer", ["lab"])
    csrf = log_in(center, client, "ada")
    head = {CSRF_HEADER: csrf}
    bad = client.post(
        "/api/v1/alert-targets", json={"name": "x", "address": "ftp://x"}, headers=head
    )
    assert bad.status_code == 422 and "http(s)" in bad.json()["detail"]
    made = client.post(
        "/api/v1/alert-targets", json={"name": "ops", "address": "mailto:o@x.org"}, headers=head
    )
    assert made.status_code == 201
    rule = client.post(
        "/api/v1/alert-rules", json={"event": "host-offline", "target": "ops"}, headers=head
    )
    assert rule.status_code == 201
    assert client.get("/api/v1/alert-rules").json() == [
        {
            "id": rule.json()["id"],
            "event": "host-offline",
            "group": None,
            "target": "ops",
            "enabled": True,
        }
    ]
    assert (
        client.post(
            "/api/v1/alert-rules", json={"event": "disk-on-fire", "target": "ops"}, headers=head
        ).status_code
        == 422
    )

    for number in range(7):
        add_host(center, f"lab{number}", "lab")
    add_host(center, "desk", "office")
    clock.step(hours=2)
    evaluate(center)
    page = client.get("/api/v1/alerts?state=open&limit=5").json()
    assert len(page["alerts"]) == 5 and page["next_before"] is not None
    rest = client.get(f"/api/v1/alerts?state=open&before={page['next_before']}").json()
    assert len(rest["alerts"]) == 3 and rest["next_before"] is None
    ids = [a["id"] for a in page["alerts"] + rest["alerts"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 8

    log_in(center, client, "vic")
    seen = client.get("/api/v1/alerts").json()["alerts"]
    assert len(seen) == 7 and {a["group"] for a in seen} == {"lab"}
    assert client.delete(
        f"/api/v1/alert-targets/{made.json()['id']}", headers=head
    ).status_code in (403,)  # a viewer changes nothing (and her CSRF token differs)


def test_cli_targets_rules_and_the_test(
    center: Center, database_url: str, hook: Hook, tmp_path: Path
) -> None:
    (center.state / "center.toml").write_text(f'database = "{database_url}"\n')
    state = ["--state", center.state]
    secret = tmp_path / "hook-secret"
    secret.write_text("a-long-enough-hook-secret\n")
    done = blockvault(
        "center", "alert", "target", "add", "hook", hook.url, "--secret-file", secret, *state
    )
    assert done.returncode == 0, done.stderr
    assert (
        blockvault(
            "center", "alert", "rule", "add", "host-offline", "--target", "hook", *state
        ).returncode
        == 0
    )
    done = blockvault("center", "alert", "target", "test", "hook", *state)
    assert done.returncode == 0, done.stderr
    [(headers, raw)] = hook.bodies
    key = b"a-long-enough-hook-secret"
    assert headers[SIGNATURE_HEADER] == "sha256=" + hmac.new(key, raw, hashlib.sha256).hexdigest()

    dead = free_port()
    smtp = ["smtp", "127.0.0.1", "--port", str(dead), "--security", "none", "--from", "a@b.cd"]
    assert blockvault("center", "alert", *smtp, *state).returncode == 0
    assert (
        blockvault(
            "center", "alert", "target", "add", "ops", "mailto:ops@example.org", *state
        ).returncode
        == 0
    )
    done = blockvault("center", "alert", "target", "test", "ops", *state)
    assert done.returncode == 1
    assert (
        done.stderr.count("\n") == 1 and "refused" in done.stderr and "Traceback" not in done.stderr
    )
    done = blockvault("center", "alert", "rule", "add", "run-failed", "--target", "nope", *state)
    assert done.returncode == 2 and "no alert target 'nope'" in done.stderr

    rules = json.loads(blockvault("center", "alert", "rule", "list", "--json", *state).stdout)
    assert rules == [
        {
            "id": rules[0]["id"],
            "event": "host-offline",
            "group": None,
            "target": "hook",
            "enabled": True,
        }
    ]
    targets = json.loads(blockvault("center", "alert", "target", "list", "--json", *state).stdout)
    assert [(t["name"], t["signed"]) for t in targets] == [("hook", True), ("ops", False)]
    with center.sessions() as session:
        actions = [a.action for a in session.scalars(select(Audit).order_by(Audit.id))]
    assert actions == [
        "alert.target.create",
        "alert.rule.create",
        "alert.target.test",
        "alert.smtp",
        "alert.target.create",
        "alert.target.test",
    ]


def test_pages_show_alerts_and_drive_targets_and_rules(
    center: Center, client: TestClient, clock: SteppedClock
) -> None:
    add_user(center, "ada", "admin")
    add_user(center, "vic", "viewer")
    add_host(center, "<b>evil</b>", "lab")
    clock.step(hours=1)
    evaluate(center)
    csrf = log_in(center, client, "ada")
    shown = client.get("/alerts").text
    assert "host-offline" in shown and "&lt;b&gt;evil&lt;/b&gt;" in shown and "<b>evil" not in shown

    dead = free_port()
    with transaction(center.sessions) as session:
        set_smtp(session, {"host": "127.0.0.1", "port": dead, "security": "none", "from": "a@b.cd"})
    form = {"csrf_token": csrf, "name": "ops", "address": "mailto:ops@example.org"}
    made = client.post("/alerts/targets", data=form, follow_redirects=False)
    assert made.status_code == 303
    refused = client.post("/alerts/targets", data=form | {"address": "gopher://x"})
    assert refused.status_code == 422 and "http(s)" in refused.text
    assert client.post("/alerts/targets", data=form | {"csrf_token": "x"}).status_code == 403
    page = client.get("/alerts/targets").text
    assert "mailto:ops@example.org" in page and 'hx-post="/alerts/targets/' in page
    with center.sessions() as session:
        [target_id] = session.scalars(select(AlertTarget.id))
    answer = client.post(f"/alerts/targets/{target_id}/test", data={"csrf_token": csrf})
    assert answer.status_code == 200 and "refused" in answer.text and "<html" not in answer.text

    rule = {"csrf_token": csrf, "event": "host-offline", "target": "ops", "group": "lab"}
    assert client.post("/alerts/rules", data=rule, follow_redirects=False).status_code == 303
    assert "no host group" in client.post("/alerts/rules", data=rule | {"group": "x"}).text
    rules = client.get("/alerts/rules").text
    assert "<td>host-offline</td><td>lab</td><td>ops</td>" in rules

    viewer_csrf = log_in(center, client, "vic")
    assert "Add a target" not in client.get("/alerts/targets").text
    denied = client.post("/alerts/targets", data=form | {"csrf_token": viewer_csrf, "name": "v"})
    assert denied.status_code == 403


def test_a_restarted_center_gives_hosts_time_before_judging_them(
    center: Center, clock: SteppedClock, hook: Hook
) -> None:
    route(center, "host-offline", "hook", hook.url)
    quiet = add_host(center, "quiet")
    back = add_host(center, "back")
    clock.step(hours=5)  # the center was down: nobody could report
    started = clock()
    for _ in range(3):
        evaluate(center, started)
        clock.step(minutes=5)
    assert alerts(center) == []
    report_run(center, back, "ok")  # its agent reconnected and reported
    clock.step(minutes=1)  # 16 minutes after the start: the offline limit has passed
    evaluate(center, started)
    deliver(center)
    [alert] = alerts(center)
    assert alert.condition == f"host-offline:host{quiet}" and len(hook.bodies) == 1

    # an alert already open stays open while a restarted center settles
    evaluate(center, clock())
    assert alerts(center)[0].closed is None


def test_a_real_center_process_tells_a_revocation_once(
    center_server: CenterServer, hook: Hook
) -> None:
    """The workers run inside ``blockvault center serve``: an agent enrolled through
    the agent API and revoked through the API is told to a signed webhook, once."""
    secret = "a-real-servers-hook-secret"
    with center_server.client(center_server.api_token()) as http:
        made = http.post(
            "/api/v1/alert-targets", json={"name": "hook", "address": hook.url, "secret": secret}
        )
        assert made.status_code == 201, made.text
        rule = {"event": "agent-revoked", "target": "hook"}
        assert http.post("/api/v1/alert-rules", json=rule).status_code == 201
        token = http.post("/api/v1/enrol-tokens", json={"uses": 1}).json()["token"]
        key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        enrolled = http.post(
            "/agent/v1/enrol",
            json={"token": token, "name": "lab9", "public_key": base64.b64encode(key).decode()},
        )
        assert enrolled.status_code == 200, enrolled.text
        host_id = enrolled.json()["host_id"]
        assert http.post(f"/api/v1/hosts/{host_id}/revoke").status_code == 200
        deadline = time.monotonic() + 90  # a watching round every 20 s, sending every 10 s
        while not hook.bodies and time.monotonic() < deadline:
            time.sleep(0.5)
        [(headers, raw)] = hook.bodies
        assert headers[SIGNATURE_HEADER] == (
            "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        )
        body = json.loads(raw)
        assert (body["event"], body["state"], body["host"]) == ("agent-revoked", "open", "lab9")
        page = http.get("/api/v1/alerts", params={"state": "open"}).json()
        assert [a["condition"] for a in page["alerts"]] == [f"agent-revoked:host{host_id}"]
        assert page["alerts"][0]["notified"] is not None
