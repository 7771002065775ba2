"""The dashboard's pages, in process (TestClient over https://, as the session cookie
is Secure): login and its rate limit, redirects, roles and groups, the plan editor
and its preview, the overview's figures, hostile inventories, settings, audit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from blockvault.center.app import create_app
from blockvault.center.auth import SESSION_COOKIE
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import Audit, CentralPlan, EnrolToken, Group, Host, Run, Setting
from blockvault.center.web.login import MAX_FAILURES, safe_next
from blockvault.plans.store import plan_from_table
from tests.center.conftest import add_user, log_in

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday
PAGES = ["/", "/hosts", "/plans", "/plans/new", "/runs", "/audit", "/users", "/settings", "/enrol"]
ADMIN_ONLY = ["/plans/new", "/audit", "/users", "/settings", "/enrol"]


@pytest.fixture
def web(center: Center) -> Iterator[TestClient]:
    center.clock = lambda: NOW
    with TestClient(
        create_app(center), base_url="https://testserver", headers={"accept": "text/html"}
    ) as client:
        yield client


def _csrf(client: TestClient, path: str = "/settings") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found is not None
    return found.group(1)


def _login(client: TestClient, name: str, password: str, next: str = "/") -> object:
    return client.post(
        "/login",
        data={"name": name, "password": password, "next": next},
        follow_redirects=False,
    )


def _host(center: Center, name: str, group: str | None, **fields: object) -> int:
    with transaction(center.sessions) as session:
        group_id = None
        if group is not None:
            row = session.scalar(select(Group).where(Group.name == group))
            if row is None:
                row = Group(name=group)
                session.add(row)
                session.flush()
            group_id = row.id
        host = Host(
            name=name, group_id=group_id, public_key="k" * 43, enrolled=NOW - timedelta(days=20)
        )
        for key, value in {"last_seen": NOW - timedelta(minutes=1), **fields}.items():
            setattr(host, key, value)
        session.add(host)
        session.flush()
        return host.id


def _run(
    center: Center, host_id: int, n: int, status: str, received: datetime, **fields: object
) -> None:
    with transaction(center.sessions) as session:
        run = Run(
            host_id=host_id,
            agent_run_id=n,
            plan="center:nightly",
            kind="backup",
            trigger="schedule",
            status=status,
            started=received - timedelta(minutes=10),
            ended=received,
            received=received,
        )
        for key, value in fields.items():
            setattr(run, key, value)
        session.add(run)


@pytest.mark.parametrize(
    ("asked", "safe"),
    [
        ("/hosts?state=ok", "/hosts?state=ok"),
        ("/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("hosts", "/"),
        ("/x\r\nSet-Cookie: a=b", "/"),
        ("", "/"),
    ],
)
def test_login_goes_back_only_to_this_site(asked: str, safe: str) -> None:
    assert safe_next(asked) == safe


def test_logged_out_pages_redirect_to_login_and_the_api_keeps_401(web: TestClient) -> None:
    for path in PAGES:
        response = web.get(path + "?x=1", follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/login?next=" + (path + "?x=1").replace(
            "/", "%2F"
        ).replace("?", "%3F").replace("=", "%3D")
    assert web.get("/events").status_code == 401
    assert web.get("/api/v1/no-such-route").headers["content-type"] == "application/json"
    assert web.get("/static/htmx.min.js").status_code == 200  # assets need no login


def test_login_sets_a_strict_session_cookie_and_returns_to_the_page(
    center: Center, web: TestClient
) -> None:
    add_user(center, "alice", "admin")
    wrong = _login(web, "alice", "nope")
    assert wrong.status_code == 401 and "Wrong name or password." in wrong.text
    assert SESSION_COOKIE not in wrong.cookies
    right = _login(web, "alice", "alice-password", "/hosts?state=ok")
    assert right.status_code == 303 and right.headers["location"] == "/hosts?state=ok"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=s_")
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), attribute
    assert web.get("/hosts").status_code == 200
    assert web.get("/login", follow_redirects=False).headers["location"] == "/"
    offsite = _login(web, "alice", "alice-password", "//evil.example/")
    assert offsite.headers["location"] == "/"
    web.post("/logout", data={"csrf_token": _csrf(web)}, follow_redirects=False)
    assert web.get("/hosts", follow_redirects=False).status_code == 303  # the session ended
    with transaction(center.sessions) as session:
        actions = session.scalars(select(Audit.action).order_by(Audit.id)).all()
    assert actions == ["login.failed", "login", "login", "logout"]


def test_failed_logins_are_limited_per_name_and_address(center: Center, web: TestClient) -> None:
    add_user(center, "alice", "admin")
    add_user(center, "bob", "viewer")
    for _ in range(MAX_FAILURES):
        assert _login(web, "alice", "guess").status_code == 401
    limited = _login(web, "alice", "alice-password")  # even the right password waits
    assert limited.status_code == 429
    assert (
        "Too many failed logins for &#39;alice&#39; from testclient: try again in 15 minutes"
        in limited.text
    )
    assert _login(web, "bob", "bob-password").status_code == 303  # another name may
    later = NOW + timedelta(minutes=15, seconds=1)
    center.clock = lambda: later
    assert _login(web, "alice", "alice-password").status_code == 303


def test_every_page_renders_and_admin_pages_refuse_a_viewer(
    center: Center, web: TestClient
) -> None:
    add_user(center, "alice", "admin")
    add_user(center, "vera", "viewer")
    log_in(center, web, "alice")
    for path in PAGES:
        response = web.get(path)
        assert response.status_code == 200, path
        assert 'href="/static/center.css"' in response.text
        assert 'aria-current="page"' in response.text or path == "/enrol"
    log_in(center, web, "vera")
    for path in ADMIN_ONLY:
        response = web.get(path)
        assert response.status_code == 403, path
        assert "this needs the admin role" in response.text


def test_a_user_of_one_group_sees_only_its_hosts(center: Center, web: TestClient) -> None:
    lab = _host(center, "lab-1", "lab")
    office = _host(center, "office-1", "office")
    add_user(center, "lena", "viewer", ["lab"])
    log_in(center, web, "lena")
    hosts = web.get("/hosts").text
    assert "lab-1" in hosts and "office-1" not in hosts
    assert web.get(f"/hosts/{lab}").status_code == 200
    assert web.get(f"/hosts/{office}").status_code == 404
    _run(center, office, 1, "ok", NOW - timedelta(hours=1))
    assert "office-1" not in web.get("/runs").text


def _plan_form(csrf: str, **changes: str) -> dict[str, str]:
    form = {
        "csrf_token": csrf,
        "name": "nightly",
        "target": "group:1",
        "repo": "/srv/repo",
        "source": "disk",
        "sources": "/dev/sda",
        "schedule": "daily 02:00",
        "window": "",
        "keep_daily": "7",
        "keep_weekly": "4",
        "enabled": "on",
    }
    form.update(changes)
    return form


def test_the_plan_editor_stores_what_agents_accept(center: Center, web: TestClient) -> None:
    _host(center, "lab-1", "lab")
    add_user(center, "alice", "admin")
    log_in(center, web, "alice")
    csrf = _csrf(web)
    assert web.post("/plans/new", data=_plan_form("")).status_code == 403  # no CSRF token
    bad = web.post("/plans/new", data=_plan_form(csrf, schedule="at teatime"))
    assert bad.status_code == 422 and "not a schedule" in bad.text
    assert 'value="at teatime"' in bad.text  # what was typed comes back
    saved = web.post("/plans/new", data=_plan_form(csrf), follow_redirects=False)
    assert saved.status_code == 303
    with transaction(center.sessions) as session:
        plan = session.scalars(select(CentralPlan)).one()
        audit = session.scalars(select(Audit).where(Audit.action == "plan.create")).one()
    assert (plan.name, plan.group_id, plan.host_id, plan.version) == ("nightly", 1, None, 1)
    assert plan.spec == {
        "repo": "/srv/repo",
        "disk": "/dev/sda",
        "schedule": "daily 02:00",
        "keep": {"daily": 7, "weekly": 4},
    }
    assert plan_from_table("nightly", plan.spec).retention is not None  # the agent's reader
    assert audit.actor == "user:alice" and audit.target == f"plan:{plan.id}"
    again = web.post("/plans/new", data=_plan_form(csrf), follow_redirects=False)
    assert again.status_code == 422 and "already has a plan of this name" in again.text
    edit = web.get(f"/plans/{plan.id}").text
    assert 'value="daily 02:00"' in edit and "/dev/sda</textarea>" in edit
    changed = web.post(
        f"/plans/{plan.id}",
        data=_plan_form(csrf, schedule="every 6h", enabled=""),
        follow_redirects=False,
    )
    assert changed.status_code == 303
    with transaction(center.sessions) as session:
        plan = session.scalars(select(CentralPlan)).one()
    assert plan.version == 2 and plan.spec["schedule"] == "every 6h"
    assert plan.spec["enabled"] is False
    web.post(f"/plans/{plan.id}/delete", data={"csrf_token": csrf})
    with transaction(center.sessions) as session:
        assert session.scalars(select(CentralPlan)).all() == []


def test_the_preview_lists_the_next_five_runs(center: Center, web: TestClient) -> None:
    add_user(center, "alice", "admin")
    log_in(center, web, "alice")
    csrf = _csrf(web)
    preview = web.post("/plans-preview", data=_plan_form(csrf, schedule="weekly Sat 03:30"))
    times = re.findall(r'<time datetime="([^"]+)"', preview.text)
    # NOW is Tuesday 2026-03-10: the next five Saturdays, read off a calendar
    assert times == [f"2026-03-{d:02d}T03:30:00+00:00" for d in (14, 21, 28)] + [
        "2026-04-04T03:30:00+00:00",
        "2026-04-11T03:30:00+00:00",
    ]
    windowed = web.post(
        "/plans-preview", data=_plan_form(csrf, schedule="every 6h", window="Mon-Fri 20:00-23:00")
    )
    assert re.findall(r'<time datetime="([^"]+)"', windowed.text)[:2] == [
        "2026-03-10T20:00:00+00:00",  # 18:00 is outside the window: it opens at 20:00
        "2026-03-11T20:00:00+00:00",  # 02:00 is too: the next opening
    ]
    wrong = web.post("/plans-preview", data=_plan_form(csrf, schedule="every fortnight"))
    assert "<time" not in wrong.text and 'class="error"' in wrong.text


def test_the_overview_counts_hosts_by_state_and_charts_their_backups(
    center: Center, web: TestClient
) -> None:
    ok = _host(center, "ok-1", "lab")
    failing = _host(center, "failing-1", "lab")
    overdue = _host(center, "overdue-1", "lab")
    _host(center, "offline-1", "lab", last_seen=NOW - timedelta(hours=2))
    _host(center, "never-1", None, last_seen=None)
    with transaction(center.sessions) as session:
        session.add(
            CentralPlan(
                name="nightly",
                group_id=1,
                spec={"repo": "/r", "disk": "/dev/sda", "schedule": "daily 02:00"},
                updated_by="user:a",
            )
        )
    _run(center, ok, 1, "ok", NOW - timedelta(hours=10), bytes_stored=3 * 2**30)
    _run(center, failing, 1, "ok", NOW - timedelta(hours=30), bytes_stored=2**30)
    _run(center, failing, 2, "failed", NOW - timedelta(hours=6))
    _run(center, overdue, 1, "ok", NOW - timedelta(hours=31))  # 1.25 days is 30 hours
    add_user(center, "alice", "admin")
    log_in(center, web, "alice")
    page = web.get("/").text
    counts = dict(re.findall(r'id="count-(\w+)">(\d+)<', page))
    assert counts == {"total": "5", "ok": "1", "failing": "1", "overdue": "1", "offline": "2"}
    assert 'id="stored">4.0 GiB<' in page
    assert "2026-03-10: 3.0 GiB stored, 2 backups" in page  # today: ok-1, failing-1
    assert "2026-03-09: 1.0 GiB stored, 2 backups" in page
    assert page.count('<rect class="bar"') == 30
    hosts = web.get("/hosts?state=failing").text
    assert "failing-1" in hosts and "ok-1" not in hosts


def test_a_hostile_inventory_is_shown_escaped_and_bounded(center: Center, web: TestClient) -> None:
    inventory = {
        "disks": [
            {
                "path": "<script>alert(1)</script>",
                "size": "huge",
                "model": 7,
                "layout": {
                    "table": {"kind": "gpt"},
                    "partitions": [
                        {
                            "partition": {"number": 1, "size": 2**20, "name": "<b>x</b>"},
                            "fs": {"type": "ext4", "label": "root"},
                        },
                        "junk",
                        {"partition": [], "fs": None},
                    ],
                },
            },
            "not a disk",
        ]
    }
    host = _host(center, "web-1", None, inventory=inventory, os="<img src=x onerror=alert(1)>")
    add_user(center, "alice", "admin")
    log_in(center, web, "alice")
    response = web.get(f"/hosts/{host}")
    assert response.status_code == 200
    assert "<script>alert" not in response.text and "<img src=x" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "<td>ext4</td><td>root</td><td>&lt;b&gt;x&lt;/b&gt;</td>" in response.text


def test_enrol_page_makes_a_token_and_shows_the_command(center: Center, web: TestClient) -> None:
    add_user(center, "alice", "admin")
    log_in(center, web, "alice")
    page = web.post(
        "/enrol", data={"csrf_token": _csrf(web), "group": "lab", "hours": "2", "uses": "30"}
    ).text
    command = re.search(r'id="enrol-command">([^<]+)<', page)
    assert command is not None
    words = command.group(1).split()
    assert words[:4] == ["blockvault", "agent", "enrol", "https://testserver"]
    token = words[words.index("--token") + 1]
    with transaction(center.sessions) as session:
        row = session.scalars(select(EnrolToken)).one()
        group = session.get(Group, row.group_id)
        logged = session.scalars(select(Audit).where(Audit.action == "enrol-token.create")).one()
    import hashlib

    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert (row.uses_left, row.expires, group and group.name) == (
        30,
        NOW + timedelta(hours=2),
        "lab",
    )
    assert token not in str(logged.detail)


def test_users_settings_and_the_audit_log(center: Center, web: TestClient) -> None:
    add_user(center, "alice", "admin")
    log_in(center, web, "alice")
    csrf = _csrf(web)
    made = web.post(
        "/users",
        data={
            "csrf_token": csrf,
            "name": "olga",
            "password": "olga-secret-1",
            "role": "operator",
            "groups": "lab, office",
        },
        follow_redirects=False,
    )
    assert made.status_code == 303
    assert (
        _login(
            TestClient(web.app, base_url="https://testserver"), "olga", "olga-secret-1"
        ).status_code
        == 303
    )
    clash = web.post(
        "/users", data={"csrf_token": csrf, "name": "olga", "password": "x" * 8, "role": "viewer"}
    )
    assert clash.status_code == 409
    me = web.post("/users/1", data={"csrf_token": csrf, "role": "viewer"})
    assert me.status_code == 422  # the last admin stays one
    assert "the last enabled admin must stay an enabled admin" in me.text
    bad = web.post("/settings", data={"csrf_token": csrf, "offline_after": "5"})
    assert bad.status_code == 422 and "must be from 60 to 604800" in bad.text
    web.post("/settings", data={"csrf_token": csrf, "offline_after": "1800"})
    with transaction(center.sessions) as session:
        assert session.get(Setting, "offline_after").value == 1800  # type: ignore[union-attr]
    page = web.get("/audit?action=user.").text
    assert "user.create" in page and "settings.update" not in page and "olga-secret-1" not in page
    assert '"groups": ["lab", "office"]' in page
    for _ in range(60):
        web.post("/settings", data={"csrf_token": csrf, "offline_after": str(1801 + _)})
    first = web.get("/audit?action=settings.").text
    assert first.count("settings.update</td>") == 50 and "page=2" in first
    second = web.get("/audit?action=settings.&page=2").text
    assert second.count("settings.update</td>") == 11 and "page=3" not in second


def test_run_now_queues_a_job_for_the_host(center: Center, web: TestClient) -> None:
    from blockvault.center.models import Job

    host = _host(center, "lab-1", "lab")
    with transaction(center.sessions) as session:
        spec = {"repo": "/r", "disk": "/dev/sda", "schedule": "daily 02:00"}
        session.add(CentralPlan(name="nightly", group_id=1, spec=spec, updated_by="user:a"))
    add_user(center, "otto", "operator")
    add_user(center, "vera", "viewer")
    log_in(center, web, "vera")
    page = web.get(f"/hosts/{host}").text
    assert "Run now" not in page
    csrf = log_in(center, web, "otto")
    assert "Run now" in web.get(f"/hosts/{host}").text
    other = web.post(f"/hosts/{host}/run", data={"csrf_token": csrf, "plan": "weekly"})
    assert other.status_code == 404
    queued = web.post(
        f"/hosts/{host}/run", data={"csrf_token": csrf, "plan": "nightly"}, follow_redirects=False
    )
    assert queued.status_code == 303
    with transaction(center.sessions) as session:
        job = session.scalars(select(Job)).one()
        logged = session.scalars(select(Audit).where(Audit.action == "job.run-plan")).one()
    assert queued.headers["location"] == f"/jobs/{job.id}"
    assert (job.kind, job.host_id, job.params, job.state) == (
        "run-plan",
        host,
        {"plan": "center:nightly"},
        "queued",
    )
    assert logged.actor == "user:otto" and logged.target == "lab-1"
