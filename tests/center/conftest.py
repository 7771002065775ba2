"""Fixtures of the center's tests: every center test runs on SQLite and on a real
PostgreSQL server (started once per session; a fresh database per test)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from blockvault.center.app import create_app
from blockvault.center.auth import Role, create_user, new_secret, start_session
from blockvault.center.context import Center, open_center
from blockvault.center.db import transaction
from blockvault.center.models import ApiToken
from blockvault_demo.servers import Database, postgresql_bin, start_postgresql
from tests.center.server import center_server  # noqa: F401  (a real server process)

_names = itertools.count()


class SteppedClock:
    """The center's clock (``Center.clock``), moved only by the test."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def step(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Database]:
    if postgresql_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = start_postgresql()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database: a SQLite file, or a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'center.db'}"
    server: Database = request.getfixturevalue("postgres_server")
    name = f"center_{os.getpid()}_{next(_names)}"
    server.run("createdb", name)
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


@pytest.fixture
def center(tmp_path: Path, database_url: str) -> Iterator[Center]:
    opened = open_center(tmp_path / "state", database_url)
    try:
        yield opened
    finally:
        opened.engine.dispose()


@pytest.fixture
def client(center: Center) -> Iterator[TestClient]:
    with TestClient(create_app(center)) as test_client:
        yield test_client


def add_user(center: Center, name: str, role: Role, groups: list[str] | None = None) -> None:
    with transaction(center.sessions) as session:
        create_user(session, name, f"{name}-password", role, groups)


def log_in(center: Center, client: TestClient, name: str) -> str:
    """Give ``client`` a session cookie of user ``name``; returns the session's CSRF
    token (the dashboard's login page does the same through its form)."""
    from sqlalchemy import select

    from blockvault.center.auth import SESSION_COOKIE
    from blockvault.center.models import User

    with transaction(center.sessions) as session:
        user = session.scalars(select(User).where(User.name == name)).one()
        cookie, row = start_session(session, user, center.clock())
        csrf = row.csrf
    client.cookies.set(SESSION_COOKIE, cookie)
    return csrf


def api_token(center: Center, name: str, scopes: list[str]) -> str:
    from sqlalchemy import select

    from blockvault.center.models import User

    token, digest = new_secret("bv_")
    with transaction(center.sessions) as session:
        user = session.scalars(select(User).where(User.name == name)).one()
        session.add(ApiToken(user_id=user.id, name="test", token_hash=digest, scopes=scopes))
    return token
