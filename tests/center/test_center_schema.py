"""The API as scripts see it: every route documented (summary, tags, response
schema), none open without credentials but the public few, and ``/metrics``
counting what the tables hold."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import timedelta

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import BaseRoute

from blockvault.center.app import create_app
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import Alert, Host, Job, Repository, Run
from tests.center.conftest import add_user, api_token

# the routes anyone may call: health, the schema and its viewer, the login page and
# form, and the agent's way in (enrolment with a one-time token, then a signed
# challenge): docs/DESIGN.md "Backup Center"
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/docs"),
    ("GET", "/api/v1/docs/oauth2-redirect"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/agent/v1/enrol"),
    ("POST", "/agent/v1/challenge"),
    ("POST", "/agent/v1/session"),
}


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route, also inside included routers (FastAPI >= 0.16x keeps them
    there, behind ``original_router``)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def test_every_api_route_is_documented(center: Center, client: TestClient) -> None:
    routes = [r for r in _api_routes(create_app(center).routes) if r.include_in_schema]
    assert len(routes) >= 12  # at least this part's own
    # a summary written for it (FastAPI would make one of the function's name), tags
    undocumented = [f"{r.methods} {r.path}" for r in routes if not r.summary or not r.tags]
    assert undocumented == []
    schema = client.get("/api/v1/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            ok = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
            assert ok, f"{method} {path} documents no success response"
            for code, response in ok.items():
                if code != "204":
                    assert response.get("content"), f"{method} {path} {code}: no response schema"


def test_no_route_without_credentials(center: Center, client: TestClient) -> None:
    checked = 0
    for path, operations in client.get("/api/v1/openapi.json").json()["paths"].items():
        for method in operations:
            if (method.upper(), path) in PUBLIC:
                continue
            answer = client.request(method, re.sub(r"\{[^}]+\}", "1", path))
            assert answer.status_code == 401, f"{method} {path}: {answer.status_code}"
            checked += 1
    assert checked >= 12  # at least this part's own routes


def test_metrics_count_the_tables(center: Center) -> None:
    # no lifespan, so no workers: the alert worker would open a run-failed alert for
    # the failed run below whenever its round fell between the inserts and the scrape
    client = TestClient(create_app(center))
    add_user(center, "ada", "admin")
    now = center.clock()
    with transaction(center.sessions) as session:
        hosts = [
            Host(name="web1", public_key="k1", last_seen=now),
            Host(name="web2", public_key="k2", last_seen=now - timedelta(hours=1)),
            Host(name="db1", public_key="k3"),
            Host(name="old", public_key="k4", last_seen=now, revoked=now),
        ]
        session.add_all(hosts)
        session.flush()
        for n, status in enumerate(["ok", "ok", "failed"]):
            session.add(
                Run(
                    host_id=hosts[0].id,
                    agent_run_id=n,
                    plan="daily",
                    kind="backup",
                    trigger="schedule",
                    status=status,
                    started=now,
                )
            )
        session.add_all(
            [
                Job(kind="restore", params={}, state="running", created_by="user:ada"),
                Job(kind="verify", params={}, state="queued", created_by="user:ada"),
                Job(kind="verify", params={}, state="queued", created_by="user:ada"),
                Alert(condition="host-offline:web2", event="host-offline", message="m"),
                Alert(condition="x", event="run-failed", message="m", closed=now),
                Repository(name="main", location="/srv/repo", stored_bytes=123456789),
            ]
        )
    assert client.get("/metrics").status_code == 401
    answer = client.get(
        "/metrics", headers={"Authorization": f"Bearer {api_token(center, 'ada', ['read'])}"}
    )
    assert answer.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    assert samples[("blockvault_center_hosts", (("state", "online"),))] == 1
    assert samples[("blockvault_center_hosts", (("state", "offline"),))] == 2
    assert samples[("blockvault_center_hosts", (("state", "revoked"),))] == 1
    assert samples[("blockvault_center_runs", (("status", "ok"),))] == 2
    assert samples[("blockvault_center_runs", (("status", "failed"),))] == 1
    assert samples[("blockvault_center_jobs", (("state", "queued"),))] == 2
    assert samples[("blockvault_center_jobs", (("state", "running"),))] == 1
    assert samples[("blockvault_center_open_alerts", (("event", "host-offline"),))] == 1
    assert ("blockvault_center_open_alerts", (("event", "run-failed"),)) not in samples
    stored = ("blockvault_center_repository_stored_bytes", (("repository", "main"),))
    assert samples[stored] == 123456789
    assert samples[("blockvault_center_users", ())] == 1
