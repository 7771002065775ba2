"""``/events`` over a real HTTPS server: the bus's events reach logged-in browsers as
server-sent events, only for hosts of their groups, and a stream ends with its
session."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import delete, select

from blockvault.center.auth import SESSION_COOKIE, start_session
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import Group, Host, User, WebSession
from blockvault.center.web import events
from tests.center import browser
from tests.center.browser import Served
from tests.center.conftest import add_user

served = browser.served  # the fixture


def _cookie(center: Center, name: str) -> str:
    with transaction(center.sessions) as session:
        user = session.scalars(select(User).where(User.name == name)).one()
        cookie, _row = start_session(session, user, center.clock())
    return cookie


def _host(center: Center, name: str, group: str) -> int:
    with transaction(center.sessions) as session:
        row = Group(name=group)
        session.add(row)
        session.flush()
        host = Host(name=name, group_id=row.id, public_key="k" * 43)
        session.add(host)
        session.flush()
        return host.id


def _stream(served: Served, cookie: str) -> Iterator[str]:
    """The stream's lines, after its opening comment (then the server is subscribed)."""
    with (
        httpx.Client(verify=served.ssl_context(), timeout=20) as client,
        client.stream("GET", served.url + "/events", cookies={SESSION_COOKIE: cookie}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == ": connected"
        yield from lines


def _next_event(lines: Iterator[str]) -> tuple[str, dict[str, object]]:
    fields: dict[str, str] = {}
    for line in lines:
        if line == "" and fields:
            return fields["event"], json.loads(fields["data"])
        if line and not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value
    raise AssertionError("the stream ended")


def test_events_reach_only_those_who_see_the_host(center: Center, served: Served) -> None:
    lab = _host(center, "lab-1", "lab")
    office = _host(center, "office-1", "office")
    add_user(center, "alice", "admin")
    add_user(center, "lena", "viewer", ["lab"])
    everything = _stream(served, _cookie(center, "alice"))
    lab_only = _stream(served, _cookie(center, "lena"))
    next(everything, None), next(lab_only, None)  # both are subscribed once they speak
    center.bus.publish("run", id=7, host_id=office, state="running")
    center.bus.publish("job", id=3, host_id=lab, state="done")
    center.bus.publish("alert", id=1)  # names no host: everyone's
    assert _next_event(everything) == (
        "run",
        {"topic": "run", "id": 7, "host_id": office, "state": "running"},
    )
    assert _next_event(everything)[0] == "job"
    assert _next_event(lab_only) == (
        "job",
        {"topic": "job", "id": 3, "host_id": lab, "state": "done"},
    )
    assert _next_event(lab_only) == ("alert", {"topic": "alert", "id": 1})


def test_a_stream_ends_with_its_session(
    center: Center, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "KEEPALIVE", 0.2)
    add_user(center, "alice", "admin")
    lines = _stream(served, _cookie(center, "alice"))
    assert next(lines) == ""  # the blank line closing ": connected"
    assert next(lines) == ": keep-alive"
    with transaction(center.sessions) as session:
        session.execute(delete(WebSession))
    assert [line for line in lines if line and line != ": keep-alive"] == []  # then it ends
