"""The agent API and the hosts API, in process, on SQLite and PostgreSQL: enrolment by
one-time token, challenge and signature, what an agent credential opens, revoke and
re-key, central plans pushed in heartbeats, runs deduplicated, hosts' status."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from blockvault.center.bus import Bus
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.link.identity import AgentKey
from blockvault.center.models import AgentToken, Audit
from tests.center.conftest import add_user, api_token

DISK_PLAN = {"disk": "/dev/vdb", "repo": "/srv/repo", "schedule": "every 1h"}


def _admin(center: Center) -> dict[str, str]:
    add_user(center, "ada", "admin")
    return {"Authorization": f"Bearer {api_token(center, 'ada', ['admin'])}"}


def _token(client: TestClient, admin: dict[str, str], **body: Any) -> str:
    reply = client.post("/api/v1/enrol-tokens", json=body, headers=admin)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["token"])


def _enrol(client: TestClient, token: str, name: str, key: AgentKey) -> Any:
    body = {"token": token, "name": name, "public_key": key.public, "os": "Linux"}
    return client.post("/agent/v1/enrol", json=body)


def _sign_in(client: TestClient, name: str, key: AgentKey) -> dict[str, str]:
    nonce = client.post("/agent/v1/challenge", json={"host": name}).json()["nonce"]
    body = {"host": name, "nonce": nonce, "signature": key.sign(nonce)}
    reply = client.post("/agent/v1/session", json=body)
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['token']}"}


def _beat(client: TestClient, agent: dict[str, str], **body: Any) -> Any:
    return client.post("/agent/v1/heartbeat", json=body, headers=agent)


def _run(
    run_id: int, plan: str, status: str = "ok", ended: datetime | None = None
) -> dict[str, Any]:
    ended = ended or datetime.now(UTC)
    return {
        "id": run_id,
        "plan": plan,
        "kind": "backup",
        "trigger": "schedule",
        "status": status,
        "started": (ended - timedelta(minutes=1)).isoformat(),
        "ended": ended.isoformat(),
        "bytes_read": 1000,
        "bytes_new": 100,
        "bytes_stored": 60,
        "snapshot": f"s{run_id}",
    }


def test_enrol_sign_in_and_what_each_credential_opens(center: Center, client: TestClient) -> None:
    admin = _admin(center)
    assert client.post("/api/v1/groups", json={"name": "lab"}, headers=admin).status_code == 201
    token = _token(client, admin, group="lab", uses=1)
    key = AgentKey.generate()
    enrolled = _enrol(client, token, "web1", key)
    assert enrolled.status_code == 200 and enrolled.json()["group"] == "lab"
    # used up: a second machine is refused, and so is an unknown token
    assert _enrol(client, token, "web2", AgentKey.generate()).status_code == 403
    assert _enrol(client, "enrol_nope", "web2", AgentKey.generate()).status_code == 403
    agent = _sign_in(client, "web1", key)
    assert _beat(client, agent, inventory={"os": "Debian"}).status_code == 200
    # an agent credential opens the agent API only; a user's token not the agent API
    assert client.get("/api/v1/hosts", headers=agent).status_code == 401
    assert client.post("/api/v1/hosts/1/revoke", headers=agent).status_code == 401
    assert _beat(client, admin).status_code == 401
    assert _beat(client, {}).status_code == 401
    # the token is stored hashed
    with transaction(center.sessions) as session:
        stored = session.scalars(select(AgentToken.token_hash)).all()
    assert agent["Authorization"].split()[1] not in stored and len(stored) == 1
    hosts = client.get("/api/v1/hosts", headers=admin).json()
    assert [(h["name"], h["group"], h["os"], h["online"]) for h in hosts] == [
        ("web1", "lab", "Debian", True)
    ]


def test_expired_token_nonce_reuse_and_a_wrong_key_are_refused(
    center: Center, client: TestClient
) -> None:
    admin = _admin(center)
    token = _token(client, admin, ttl_seconds=60, uses=5)
    start = datetime.now(UTC)
    center.clock = lambda: start + timedelta(minutes=2)
    assert _enrol(client, token, "late", AgentKey.generate()).status_code == 403
    center.clock = lambda: start
    key = AgentKey.generate()
    assert _enrol(client, token, "web1", key).status_code == 200
    assert _enrol(client, token, "web1", AgentKey.generate()).status_code == 409  # taken
    nonce = client.post("/agent/v1/challenge", json={"host": "web1"}).json()["nonce"]
    forged = {"host": "web1", "nonce": nonce, "signature": AgentKey.generate().sign(nonce)}
    assert client.post("/agent/v1/session", json=forged).status_code == 401
    signed = {"host": "web1", "nonce": nonce, "signature": key.sign(nonce)}
    assert client.post("/agent/v1/session", json=signed).status_code == 401  # nonce spent
    nonce = client.post("/agent/v1/challenge", json={"host": "web1"}).json()["nonce"]
    center.clock = lambda: start + timedelta(minutes=5)  # past the nonce's minute
    late = {"host": "web1", "nonce": nonce, "signature": key.sign(nonce)}
    assert client.post("/agent/v1/session", json=late).status_code == 401
    assert client.post("/agent/v1/challenge", json={"host": "ghost"}).status_code == 401


def test_revoke_and_rekey(center: Center, client: TestClient) -> None:
    admin = _admin(center)
    old = AgentKey.generate()
    host_id = _enrol(client, _token(client, admin), "web1", old).json()["host_id"]
    agent = _sign_in(client, "web1", old)
    revoked = client.post(f"/api/v1/hosts/{host_id}/revoke", headers=admin)
    assert revoked.status_code == 200
    assert _beat(client, agent).status_code == 401  # its tokens died at once
    assert client.post("/agent/v1/challenge", json={"host": "web1"}).status_code == 403
    with transaction(center.sessions) as session:
        actions = session.scalars(select(Audit.action).order_by(Audit.id)).all()
    assert "host.revoke" in actions
    rekey = client.post(f"/api/v1/hosts/{host_id}/rekey", headers=admin).json()
    # bound to web1: another name cannot use it
    assert _enrol(client, rekey["token"], "intruder", AgentKey.generate()).status_code == 403
    new = AgentKey.generate()
    assert _enrol(client, rekey["token"], "web1", new).json()["host_id"] == host_id
    nonce = client.post("/agent/v1/challenge", json={"host": "web1"}).json()["nonce"]
    body = {"host": "web1", "nonce": nonce, "signature": old.sign(nonce)}
    assert client.post("/agent/v1/session", json=body).status_code == 401  # old key dead
    assert _beat(client, _sign_in(client, "web1", new)).status_code == 200


def test_central_plans_are_validated_versioned_and_pushed(
    center: Center, client: TestClient
) -> None:
    admin = _admin(center)
    client.post("/api/v1/groups", json={"name": "lab"}, headers=admin)
    key = AgentKey.generate()
    _enrol(client, _token(client, admin, group="lab"), "web1", key)
    agent = _sign_in(client, "web1", key)
    bad = {"name": "nightly", "group": "lab", "spec": {**DISK_PLAN, "schedule": "every blue moon"}}
    refused = client.post("/api/v1/plans", json=bad, headers=admin)
    assert refused.status_code == 422 and "plan nightly" in refused.text
    typo = {"name": "nightly", "group": "lab", "spec": {**DISK_PLAN, "shedule": "daily"}}
    assert "unknown field 'shedule'" in client.post("/api/v1/plans", json=typo, headers=admin).text
    good = {"name": "nightly", "group": "lab", "spec": DISK_PLAN}
    plan = client.post("/api/v1/plans", json=good, headers=admin).json()
    center.config = replace(center.config, heartbeat_interval=5)
    first = _beat(client, agent).json()
    assert first["interval"] == 5
    assert [(p["name"], p["spec"]) for p in first["plans"]] == [("nightly", DISK_PLAN)]
    again = _beat(client, agent, plans_version=first["plans_version"]).json()
    assert again["plans"] is None and again["plans_version"] == first["plans_version"]
    changed = {**DISK_PLAN, "schedule": "every 2h"}
    put = client.put(f"/api/v1/plans/{plan['id']}", json={"spec": changed}, headers=admin)
    assert put.json()["version"] == 2
    third = _beat(client, agent, plans_version=first["plans_version"]).json()
    assert third["plans"][0]["spec"] == changed and third["plans_version"] != first["plans_version"]
    preview = client.get(f"/api/v1/plans/{plan['id']}/preview", headers=admin).json()["next"]
    moments = [datetime.fromisoformat(m) for m in preview]
    assert len(moments) == 5
    assert {b - a for a, b in itertools.pairwise(moments)} == {timedelta(hours=2)}
    assert client.delete(f"/api/v1/plans/{plan['id']}", headers=admin).status_code == 204
    assert _beat(client, agent, plans_version=third["plans_version"]).json()["plans"] == []


def test_runs_are_deduplicated_and_hosts_show_their_status(
    center: Center, client: TestClient
) -> None:
    admin = _admin(center)
    key = AgentKey.generate()
    _enrol(client, _token(client, admin), "web1", key)
    client.post(
        "/api/v1/plans", json={"name": "hourly", "host": "web1", "spec": DISK_PLAN}, headers=admin
    )
    start = datetime.now(UTC)
    center.clock = lambda: start
    agent = _sign_in(client, "web1", key)
    runs = [_run(1, "center:hourly"), _run(2, "center:hourly", "failed")]
    assert _beat(client, agent, runs=runs).json()["acked"] == [1, 2]
    assert _beat(client, agent, runs=runs).json()["acked"] == [1, 2]  # again: no new rows
    listed = client.get("/api/v1/runs", headers=admin).json()
    assert listed["total"] == 2
    assert client.get("/api/v1/runs?status=failed", headers=admin).json()["total"] == 1
    page = client.get("/api/v1/runs?limit=1&offset=1", headers=admin).json()["runs"]
    assert [r["agent_run_id"] for r in page] == [1] and page[0]["central_plan_id"] is not None
    (host,) = client.get("/api/v1/hosts", headers=admin).json()
    assert host["online"] and not host["overdue"] and host["stored_bytes"] == 120
    assert host["change_rate"] == 0.1
    # an hour's plan, 1.25 hours without a good backup: overdue; 15 min silent: offline
    center.clock = lambda: start + timedelta(minutes=80)
    (host,) = client.get("/api/v1/hosts", headers=admin).json()
    assert host["overdue"] and host["overdue_plans"] == ["center:hourly"] and not host["online"]
    # a good run the agent claims ended in the future counts from the center's receipt
    center.clock = lambda: start + timedelta(minutes=81)
    future = _run(3, "center:hourly", ended=start + timedelta(days=30))
    assert _beat(client, _sign_in(client, "web1", key), runs=[future]).status_code == 200
    detail = client.get(f"/api/v1/hosts/{host['id']}", headers=admin).json()
    assert datetime.fromisoformat(detail["last_good_backup"]) == start + timedelta(minutes=81)
    assert not detail["overdue"] and [r["agent_run_id"] for r in detail["runs"]] == [3, 2, 1]


def test_users_see_only_their_groups_hosts(center: Center, client: TestClient) -> None:
    admin = _admin(center)
    for name in ("lab", "office"):
        client.post("/api/v1/groups", json={"name": name}, headers=admin)
    for host, group in (("l1", "lab"), ("o1", "office")):
        _enrol(client, _token(client, admin, group=group), host, AgentKey.generate())
    add_user(center, "lena", "viewer", ["lab"])
    lena = {"Authorization": f"Bearer {api_token(center, 'lena', ['read'])}"}
    assert [h["name"] for h in client.get("/api/v1/hosts", headers=lena).json()] == ["l1"]
    hosts = {h["name"]: h["id"] for h in client.get("/api/v1/hosts", headers=admin).json()}
    assert client.get(f"/api/v1/hosts/{hosts['o1']}", headers=lena).status_code == 404
    assert client.post("/api/v1/enrol-tokens", json={}, headers=lena).status_code == 403


def test_agent_bodies_are_bounded_before_anyone_reads_them(client: TestClient) -> None:
    huge = b'{"inventory": {"x": "' + b"a" * (3 << 20) + b'"}}'
    reply = client.post("/agent/v1/heartbeat", content=huge)
    assert reply.status_code == 413 and "larger than" in reply.json()["detail"]
    bulky = client.post("/agent/v1/challenge", json={"host": "h" * 2000})
    assert bulky.status_code == 413
    assert client.post("/agent/v1/challenge", json={"host": "nobody"}).status_code == 401


class RecordingBus(Bus):
    """A real bus that also keeps what was published, to look at afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[dict[str, Any]] = []

    def publish(self, topic: str, **fields: Any) -> None:
        self.published.append({"topic": topic, **fields})
        super().publish(topic, **fields)


def test_events_are_published_once_committed(center: Center, client: TestClient) -> None:
    bus = center.bus = RecordingBus()
    admin = _admin(center)
    key = AgentKey.generate()
    host_id = _enrol(client, _token(client, admin), "web1", key).json()["host_id"]
    agent = _sign_in(client, "web1", key)
    _beat(client, agent, runs=[_run(7, "local")])
    assert client.post("/api/v1/hosts/999/revoke", headers=admin).status_code == 404
    assert client.post(f"/api/v1/hosts/{host_id}/revoke", headers=admin).status_code == 200
    topics = [(e["topic"], e.get("state") or e.get("status")) for e in bus.published]
    assert topics == [("host", "enrolled"), ("run", "ok"), ("host", "online"), ("host", "revoked")]
    # each names its host where the dashboard's stream scopes events (web/events.py)
    assert [e["host_id"] for e in bus.published] == [host_id] * 4
