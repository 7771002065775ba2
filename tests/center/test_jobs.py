"""The job queue through its API, on SQLite and PostgreSQL: users queue, agents take
(long poll), report and finish; only the maintenance role gets kinds that delete."""

from __future__ import annotations

import base64
import threading
import time
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from blockvault.center import jobs as queue
from blockvault.center.auth import new_secret
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.fleet import offline_after
from blockvault.center.models import AgentToken, Audit, Group, Host
from tests.center.conftest import add_user, api_token
from tests.center.test_agents_api import RecordingBus


def add_host(center: Center, name: str, group: str | None = None) -> dict[str, str]:
    """An enrolled host with a live agent token: the headers its agent sends."""
    token, digest = new_secret("a_")
    with transaction(center.sessions) as session:
        group_row = None
        if group is not None:
            group_row = session.scalar(select(Group).where(Group.name == group))
            if group_row is None:
                group_row = Group(name=group)
                session.add(group_row)
                session.flush()
        host = Host(
            name=name,
            public_key="x" * 44,
            group_id=group_row and group_row.id,
            last_seen=center.clock(),
        )
        session.add(host)
        session.flush()
        expires = center.clock() + timedelta(hours=1)
        session.add(AgentToken(token_hash=digest, host_id=host.id, expires=expires))
    return {"Authorization": f"Bearer {token}"}


def operator(center: Center) -> dict[str, str]:
    add_user(center, "otto", "operator")
    return {"Authorization": f"Bearer {api_token(center, 'otto', ['operate'])}"}


BROWSE = {"repo": "/srv/repo", "snapshot": "latest", "path": "1/etc", "page": 0}


def test_a_job_goes_from_queued_to_done_through_the_agent(
    center: Center, client: TestClient
) -> None:
    bus = center.bus = RecordingBus()
    user = operator(center)
    agent = add_host(center, "web1")
    other = add_host(center, "web2")
    made = client.post(
        "/api/v1/jobs", json={"kind": "browse", "host": "web1", "params": BROWSE}, headers=user
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["state"] == "queued" and job["params"]["page_size"] == 100

    assert client.get("/agent/v1/jobs", headers=other).json() == []  # not web2's
    taken = client.get("/agent/v1/jobs", headers=agent).json()
    assert [(j["id"], j["kind"]) for j in taken] == [(job["id"], "browse")]
    assert client.get("/agent/v1/jobs", headers=agent).json() == []  # handed out once
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=user).json()["state"] == "running"

    path = f"/agent/v1/jobs/{job['id']}"
    assert (
        client.post(f"{path}/progress", json={"done": 1, "total": 2}, headers=other).status_code
        == 404
    )
    progress = client.post(
        f"{path}/progress", json={"done": 1, "total": 2, "message": "half"}, headers=agent
    )
    assert progress.json() == {"cancel": False}
    for n in range(3):
        client.post(f"{path}/log", json={"level": "info", "message": f"line {n}"}, headers=agent)
    result = {"entries": [{"name": "hosts", "type": "file", "size": 9, "mtime": None}]}
    ended = client.post(f"{path}/result", json={"ok": True, "result": result}, headers=agent)
    assert ended.json() == {"state": "done"}

    shown = client.get(f"/api/v1/jobs/{job['id']}", headers=user).json()
    assert shown["state"] == "done" and shown["result"] == result
    assert shown["progress"]["message"] == "half"
    first = client.get(f"/api/v1/jobs/{job['id']}/log?limit=2", headers=user).json()
    assert [x["message"] for x in first["lines"]] == ["line 0", "line 1"] and first["more"]
    rest = client.get(
        f"/api/v1/jobs/{job['id']}/log?after={first['lines'][-1]['id']}", headers=user
    )
    assert [x["message"] for x in rest.json()["lines"]] == ["line 2"]
    listed = client.get("/api/v1/jobs?host=web1&state=done", headers=user).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    # every job event names its host where the dashboard's stream scopes events
    with center.sessions() as session:
        web1 = session.scalar(select(Host.id).where(Host.name == "web1"))
    jobs = [e for e in bus.published if e["topic"] == "job"]
    assert [e["state"] for e in jobs] == ["queued", "running", "running", "done"]
    assert {e["host_id"] for e in jobs} == {web1}
    with center.sessions() as session:
        actions = set(session.scalars(select(Audit.action)))
    assert {"job.browse", "job.result"} <= actions


def test_requests_are_validated_and_deleting_kinds_never_reach_an_agent(
    center: Center, client: TestClient
) -> None:
    user = operator(center)
    agent = add_host(center, "pc1")
    restore = {"repo": "/srv/repo", "snapshot": "abc", "target": "/dev/sdb"}

    def post(kind: str, params: dict[str, Any], host: str | None = "pc1") -> Any:
        return client.post(
            "/api/v1/jobs", json={"kind": kind, "host": host, "params": params}, headers=user
        )

    refused = post("restore-disk", restore)
    assert refused.status_code == 422 and "'sdb'" in refused.json()["detail"]
    assert post("restore-disk", {**restore, "confirm": "sda"}).status_code == 422
    assert (
        post(
            "restore-disk", {**restore, "target": "/dev/../etc/passwd", "confirm": "passwd"}
        ).status_code
        == 422
    )
    assert post("restore-disk", {**restore, "confirm": "sdb"}).status_code == 201
    assert post("restore-files", {**BROWSE, "destination": "relative/dir"}).status_code == 422
    for deleting in ("prune", "gc", "forget"):
        answer = post(deleting, {"repository": "main"})
        assert answer.status_code == 422
        assert "maintenance role" in answer.json()["detail"] or deleting == "forget"
    assert post("browse", BROWSE, host="nobody").status_code == 404
    assert post("prune", {"repository": "unregistered"}, host=None).status_code == 422

    # a deleting job written straight into the table is still never handed to an agent
    with transaction(center.sessions) as session:
        host = session.scalars(select(Host).where(Host.name == "pc1")).one()
        queue.queue(session, "prune", host, {"repository": "main"}, "test", center.clock())
    assert [j["kind"] for j in client.get("/agent/v1/jobs", headers=agent).json()] == [
        "restore-disk"
    ]
    assert client.get("/agent/v1/jobs", headers=user).status_code == 401  # a user's token


def test_a_viewer_sees_only_their_groups_and_cannot_queue(
    center: Center, client: TestClient
) -> None:
    user = operator(center)
    add_host(center, "lab1", group="lab")
    add_host(center, "office1", group="office")
    for host in ("lab1", "office1"):
        client.post(
            "/api/v1/jobs", json={"kind": "browse", "host": host, "params": BROWSE}, headers=user
        )
    add_user(center, "vera", "viewer", groups=["lab"])
    viewer = {"Authorization": f"Bearer {api_token(center, 'vera', ['read'])}"}
    listed = client.get("/api/v1/jobs", headers=viewer).json()["jobs"]
    assert [j["host"] for j in listed] == ["lab1"]
    hidden = client.get("/api/v1/jobs?host=office1", headers=user).json()["jobs"][0]["id"]
    assert client.get(f"/api/v1/jobs/{hidden}", headers=viewer).status_code == 404
    made = client.post(
        "/api/v1/jobs", json={"kind": "browse", "host": "lab1", "params": BROWSE}, headers=viewer
    )
    assert made.status_code == 403


def test_the_long_poll_wakes_when_a_job_is_queued(center: Center, client: TestClient) -> None:
    user = operator(center)
    agent = add_host(center, "pc1")
    answers: list[Any] = []
    started = time.monotonic()
    poll = threading.Thread(
        target=lambda: answers.append(client.get("/agent/v1/jobs?wait=20", headers=agent).json())
    )
    poll.start()
    time.sleep(0.5)  # the poll is waiting (an early job would be found at once anyway)
    client.post(
        "/api/v1/jobs", json={"kind": "browse", "host": "pc1", "params": BROWSE}, headers=user
    )
    poll.join(20)
    assert answers and [j["kind"] for j in answers[0]] == ["browse"]
    assert time.monotonic() - started < 10
    assert client.get("/agent/v1/jobs?wait=26", headers=agent).status_code == 422  # over the bound


def test_cancel_reaches_the_agent_and_offline_hosts_fail_their_jobs(
    center: Center, client: TestClient
) -> None:
    user = operator(center)
    agent = add_host(center, "pc1")
    for _ in range(2):
        client.post(
            "/api/v1/jobs",
            json={"kind": "verify", "host": "pc1", "params": {"repo": "r"}},
            headers=user,
        )
    first, second = (j["id"] for j in client.get("/agent/v1/jobs", headers=agent).json())
    assert client.post(f"/api/v1/jobs/{first}/cancel", headers=user).json()["state"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{first}/cancel", headers=user).status_code == 409
    answer = client.post(f"/agent/v1/jobs/{first}/progress", json={"done": 5}, headers=agent)
    assert answer.json() == {"cancel": True}
    late = client.post(
        f"/agent/v1/jobs/{first}/result", json={"ok": True, "result": {}}, headers=agent
    )
    assert late.json() == {"state": "cancelled"}  # a late result changes nothing

    with transaction(center.sessions) as session:
        host = session.scalars(select(Host).where(Host.name == "pc1")).one()
        host.last_seen = center.clock() - offline_after(session) - timedelta(seconds=1)
    with transaction(center.sessions) as session:
        failed = queue.fail_offline(session, center.clock())
    assert [j.id for j in failed] == [second]
    shown = client.get(f"/api/v1/jobs/{second}", headers=user).json()
    assert shown["state"] == "failed" and "pc1 stopped heart-beating" in shown["error"]


def test_agent_bodies_are_bounded(center: Center, client: TestClient) -> None:
    user = operator(center)
    agent = add_host(center, "pc1")
    client.post(
        "/api/v1/jobs",
        json={"kind": "download", "host": "pc1", "params": {**BROWSE, "path": "1/big"}},
        headers=user,
    )
    (job,) = client.get("/agent/v1/jobs", headers=agent).json()
    path = f"/agent/v1/jobs/{job['id']}"
    huge = {"level": "info", "message": "x" * 100_000}
    assert client.post(f"{path}/log", json=huge, headers=agent).status_code == 413
    assert client.post(f"{path}/log", content=b"[1]", headers=agent).status_code == 400

    def upload(offset: int, data: bytes) -> Any:
        piece = {"offset": offset, "data": base64.b64encode(data).decode()}
        return client.post(f"{path}/upload", json=piece, headers=agent)

    assert upload(0, b"a" * (2 << 20)).status_code == 413
    assert upload(0, b"hello ").json() == {"size": 6}
    assert upload(0, b"again").status_code == 409
    assert upload(6, b"world").json() == {"size": 11}
    client.post(f"{path}/result", json={"ok": True, "result": {"name": "big"}}, headers=agent)
    got = client.get(f"/api/v1/jobs/{job['id']}/download", headers=user)
    assert got.content == b"hello world"
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=user).json()["result"]["size"] == 11
    late = {"offset": 11, "data": "eA=="}
    assert client.post(f"{path}/upload", json=late, headers=agent).status_code == 409  # done


def test_a_deployment_is_a_parent_with_one_job_per_host_and_a_sender(
    center: Center, client: TestClient
) -> None:
    user = operator(center)
    agents = {name: add_host(center, name) for name in ("pc1", "pc2", "server")}
    body = {
        "repo": "/srv/repo",
        "snapshot": "latest",
        "hosts": [{"host": "pc1", "disk": "/dev/sda"}, {"host": "pc2", "disk": "/dev/nvme0n1"}],
        "sender": "server",
    }
    assert (
        client.post(
            "/api/v1/deployments", json={**body, "sender": "nobody"}, headers=user
        ).status_code
        == 404
    )
    bad_disk = {**body, "hosts": [{"host": "pc1", "disk": "sda; reboot"}]}
    assert client.post("/api/v1/deployments", json=bad_disk, headers=user).status_code == 422
    parent = client.post("/api/v1/deployments", json=body, headers=user).json()
    assert parent["kind"] == "deploy" and parent["state"] == "running"
    taken = {name: client.get("/agent/v1/jobs", headers=h).json() for name, h in agents.items()}
    assert [j["kind"] for j in taken["server"]] == ["cast-send"]
    assert taken["pc2"][0]["params"]["disk"] == "/dev/nvme0n1"
    codes = {j[0]["params"]["code"] for j in taken.values()}
    sessions = {j[0]["params"]["session"] for j in taken.values()}
    assert len(codes) == 1 and len(sessions) == 1  # one session, one code for all
    children = client.get(f"/api/v1/jobs?parent={parent['id']}", headers=user).json()["jobs"]
    assert len(children) == 3 and all("code" not in c["params"] for c in children)

    for name in ("server", "pc1"):
        job = taken[name][0]["id"]
        client.post(
            f"/agent/v1/jobs/{job}/result", json={"ok": True, "result": {}}, headers=agents[name]
        )
    progress = client.get(f"/api/v1/jobs/{parent['id']}", headers=user).json()
    assert progress["state"] == "running" and progress["progress"]["done"] == 2
    failed = {"ok": False, "error": "/dev/nvme0n1 is this machine's system disk"}
    client.post(
        f"/agent/v1/jobs/{taken['pc2'][0]['id']}/result", json=failed, headers=agents["pc2"]
    )
    ended = client.get(f"/api/v1/jobs/{parent['id']}", headers=user).json()
    assert ended["state"] == "failed" and "1 of 3" in ended["error"]
