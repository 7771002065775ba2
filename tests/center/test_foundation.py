"""The center's foundation: the schema its migrations build is the models' schema, on
SQLite and PostgreSQL; roles, sessions, CSRF and API tokens guard routes."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi import APIRouter
from fastapi.testclient import TestClient

from blockvault.center import models  # noqa: F401
from blockvault.center.app import create_app
from blockvault.center.auth import CSRF_HEADER, Operator, Viewer
from blockvault.center.context import Center
from blockvault.center.db import Base, migrate
from tests.center.conftest import add_user, api_token, log_in


def test_migrations_build_the_models_schema(center: Center) -> None:
    with center.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    migrate(center.engine)  # a second start finds nothing to do


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/api/v1/openapi.json").json()["info"]["title"].startswith("blockvault")


def _guarded_app(center: Center) -> TestClient:
    app = create_app(center)
    router = APIRouter()

    @router.get("/probe/read")
    def read(who: Viewer) -> dict[str, str]:
        return {"name": who.name, "role": who.role}

    @router.post("/probe/run")
    def run(who: Operator) -> dict[str, str]:
        return {"name": who.name}

    app.include_router(router)
    return TestClient(app)


def test_roles_sessions_and_csrf(center: Center) -> None:
    add_user(center, "vera", "viewer")
    add_user(center, "otto", "operator")
    client = _guarded_app(center)
    assert client.get("/probe/read").status_code == 401
    log_in(center, client, "vera")
    assert client.get("/probe/read").json() == {"name": "vera", "role": "viewer"}
    csrf = log_in(center, client, "otto")
    assert client.post("/probe/run").status_code == 403  # no CSRF token
    assert client.post("/probe/run", headers={CSRF_HEADER: "wrong"}).status_code == 403
    assert client.post("/probe/run", headers={CSRF_HEADER: csrf}).json() == {"name": "otto"}
    assert client.post("/probe/run", data={"csrf_token": csrf}).status_code == 200


def test_token_scopes_narrow_the_role(center: Center) -> None:
    add_user(center, "ada", "admin")
    client = _guarded_app(center)
    reader = api_token(center, "ada", ["read"])
    operator = api_token(center, "ada", ["operate"])
    auth = {"Authorization": f"Bearer {reader}"}
    assert client.get("/probe/read", headers=auth).json()["role"] == "viewer"
    assert client.post("/probe/run", headers=auth).status_code == 403
    ok = client.post("/probe/run", headers={"Authorization": f"Bearer {operator}"})
    assert ok.status_code == 200  # tokens need no CSRF token
    assert client.get("/probe/read", headers={"Authorization": "Bearer bv_nope"}).status_code == 401
