"""The admin API on SQLite and PostgreSQL: users and roles, group-scoped users, API
tokens (scopes, expiry, revocation), the audit log's rows and pages, settings."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import select

from blockvault.center.api.admin import housekeeping
from blockvault.center.app import create_app
from blockvault.center.auth import CSRF_HEADER, Viewer, start_session, verify_password
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import Alert, AlertDelivery, AlertTarget, Audit, User, WebSession
from blockvault.center.settings import change_settings, get_setting
from blockvault.center.users import Actor
from tests.center.conftest import add_user, api_token, log_in


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _actions(center: Center) -> list[tuple[str, str, str | None]]:
    with center.sessions() as session:
        rows = session.scalars(select(Audit).order_by(Audit.id))
        return [(r.actor, r.action, r.target) for r in rows]


def test_users_and_roles(center: Center, client: TestClient) -> None:
    add_user(center, "ada", "admin")
    add_user(center, "vera", "viewer")
    admin = _bearer(api_token(center, "ada", ["admin"]))
    viewer = _bearer(api_token(center, "vera", ["read"]))
    new = {"name": "otto", "role": "operator", "password": "otto-secret-1"}
    assert client.post("/api/v1/users", json=new).status_code == 401
    assert client.post("/api/v1/users", json=new, headers=viewer).status_code == 403
    assert client.get("/api/v1/users", headers=viewer).status_code == 403
    made = client.post("/api/v1/users", json=new, headers=admin)
    assert made.status_code == 201
    assert made.json()["role"] == "operator" and made.json()["groups"] is None
    assert client.post("/api/v1/users", json=new, headers=admin).status_code == 409
    bad = {**new, "name": "no spaces please"}
    assert client.post("/api/v1/users", json=bad, headers=admin).status_code == 422
    listed = client.get("/api/v1/users", headers=admin)
    assert [u["name"] for u in listed.json()] == ["ada", "otto", "vera"]
    with center.sessions() as session:
        hashes = [u.password_hash for u in session.scalars(select(User))]
    assert not any(h in listed.text for h in hashes)
    assert all("password" not in key for u in listed.json() for key in u)

    # a session of otto's ends when an admin changes the account
    csrf = log_in(center, client, "otto")
    assert client.get("/api/v1/me").json()["role"] == "operator"
    changed = client.patch("/api/v1/users/otto", json={"role": "viewer"}, headers=admin)
    assert changed.json()["role"] == "viewer"
    assert client.get("/api/v1/me").status_code == 401
    del csrf
    client.cookies.clear()

    # a disabled user's tokens stop working; enabled again, they work
    otto = _bearer(api_token(center, "otto", ["read"]))
    assert client.get("/api/v1/me", headers=otto).status_code == 200
    client.patch("/api/v1/users/otto", json={"disabled": True}, headers=admin)
    assert client.get("/api/v1/me", headers=otto).status_code == 401
    client.patch("/api/v1/users/otto", json={"disabled": False}, headers=admin)
    assert client.get("/api/v1/me", headers=otto).status_code == 200

    # the last enabled admin stays one
    last = client.patch("/api/v1/users/ada", json={"role": "viewer"}, headers=admin)
    assert last.status_code == 422 and "last enabled admin" in last.json()["detail"]
    assert client.delete("/api/v1/users/ada", headers=admin).status_code == 422
    assert client.delete("/api/v1/users/otto", headers=admin).status_code == 204
    assert client.get("/api/v1/me", headers=otto).status_code == 401
    assert client.get("/api/v1/users/otto", headers=admin).status_code == 404

    assert [a for a in _actions(center) if a[0] == "user:ada"] == [
        ("user:ada", "user.create", "user:otto"),
        ("user:ada", "user.update", "user:otto"),
        ("user:ada", "user.update", "user:otto"),
        ("user:ada", "user.update", "user:otto"),
        ("user:ada", "user.delete", "user:otto"),
    ]


def test_browser_changes_need_the_csrf_token(center: Center, client: TestClient) -> None:
    add_user(center, "ada", "admin")
    csrf = log_in(center, client, "ada")
    new = {"name": "vera", "role": "viewer", "password": "vera-secret-1"}
    assert client.post("/api/v1/users", json=new).status_code == 403
    made = client.post("/api/v1/users", json=new, headers={CSRF_HEADER: csrf})
    assert made.status_code == 201


def test_changing_my_own_password(center: Center, client: TestClient) -> None:
    add_user(center, "vera", "viewer")
    token = _bearer(api_token(center, "vera", ["read"]))
    change = {"current": "vera-password", "new": "vera-password-2"}
    assert client.post("/api/v1/me/password", json=change, headers=token).status_code == 403
    csrf = {CSRF_HEADER: log_in(center, client, "vera")}
    wrong = {"current": "guess", "new": "vera-password-2"}
    assert client.post("/api/v1/me/password", json=wrong, headers=csrf).status_code == 403
    assert client.post("/api/v1/me/password", json=change, headers=csrf).status_code == 204
    assert client.get("/api/v1/me").status_code == 401  # the session ended with it
    with center.sessions() as session:
        vera = session.scalars(select(User).where(User.name == "vera")).one()
        assert verify_password(vera.password_hash, "vera-password-2")


def test_group_scoped_users(center: Center) -> None:
    add_user(center, "ada", "admin")
    app = create_app(center)
    probe = APIRouter()

    @probe.get("/probe/sees/{group}")
    def sees(group: str, who: Viewer) -> bool:
        return who.sees(group)

    app.include_router(probe)
    client = TestClient(app)
    admin = _bearer(api_token(center, "ada", ["admin"]))
    new = {"name": "lab-op", "role": "operator", "password": "lab-secret-1", "groups": ["lab"]}
    assert client.post("/api/v1/users", json=new, headers=admin).json()["groups"] == ["lab"]
    scoped = _bearer(api_token(center, "lab-op", ["operate"]))
    assert client.get("/api/v1/me", headers=scoped).json()["groups"] == ["lab"]
    assert client.get("/probe/sees/lab", headers=scoped).json() is True
    assert client.get("/probe/sees/office", headers=scoped).json() is False
    assert client.get("/probe/sees/office", headers=admin).json() is True
    # groups: null widens to every group; absent leaves them as they are
    client.patch("/api/v1/users/lab-op", json={"role": "viewer"}, headers=admin)
    assert client.get("/api/v1/users/lab-op", headers=admin).json()["groups"] == ["lab"]
    client.patch("/api/v1/users/lab-op", json={"groups": None}, headers=admin)
    assert client.get("/probe/sees/office", headers=scoped).json() is True


def test_api_tokens(center: Center, client: TestClient) -> None:
    add_user(center, "ada", "admin")
    add_user(center, "vera", "viewer")
    admin = _bearer(api_token(center, "ada", ["admin"]))
    vera = _bearer(api_token(center, "vera", ["read"]))

    # a token is shown once and works; its scopes narrow the role
    made = client.post(
        "/api/v1/tokens", json={"name": "ci", "scopes": ["read"]}, headers=admin
    ).json()
    assert made["token"].startswith("bv_") and made["user"] == "ada"
    reader = _bearer(made["token"])
    me = client.get("/api/v1/me", headers=reader).json()
    assert me["role"] == "admin" and me["effective_role"] == "viewer" and me["via"] == "token"
    assert client.get("/api/v1/users", headers=reader).status_code == 403
    listed = client.get("/api/v1/tokens", headers=admin)
    assert made["token"] not in listed.text and "token_hash" not in listed.text

    # no token mints a stronger one: not a viewer's, not an admin's read token
    up = {"name": "up", "scopes": ["admin"]}
    assert client.post("/api/v1/tokens", json=up, headers=vera).status_code == 422
    assert client.post("/api/v1/tokens", json=up, headers=reader).status_code == 422
    other = {"name": "x", "scopes": ["read"], "user": "ada"}
    assert client.post("/api/v1/tokens", json=other, headers=vera).status_code == 403

    # users see their own tokens; an admin sees all, and may revoke any
    own = client.post("/api/v1/tokens", json={"name": "mine", "scopes": ["read"]}, headers=vera)
    assert own.status_code == 201
    assert {t["user"] for t in client.get("/api/v1/tokens", headers=vera).json()} == {"vera"}
    assert {t["user"] for t in client.get("/api/v1/tokens", headers=admin).json()} == {
        "ada",
        "vera",
    }
    admins_token = made["id"]
    assert client.delete(f"/api/v1/tokens/{admins_token}", headers=vera).status_code == 404
    mine = _bearer(own.json()["token"])
    assert client.get("/api/v1/me", headers=mine).status_code == 200
    assert client.delete(f"/api/v1/tokens/{own.json()['id']}", headers=admin).status_code == 204
    assert client.get("/api/v1/me", headers=mine).status_code == 401
    revoked = [t for t in client.get("/api/v1/tokens", headers=admin).json() if t["revoked"]]
    assert [t["name"] for t in revoked] == ["mine"]

    # expiry is the center's clock's business
    short = client.post(
        "/api/v1/tokens",
        json={"name": "day", "scopes": ["read"], "expires_in_days": 1},
        headers=admin,
    ).json()
    assert client.get("/api/v1/me", headers=_bearer(short["token"])).status_code == 200
    start = center.clock()
    center.clock = lambda: start + timedelta(days=1, seconds=1)
    assert client.get("/api/v1/me", headers=_bearer(short["token"])).status_code == 401
    assert client.get("/api/v1/me", headers=reader).status_code == 200  # 90 days by default

    actions = [a[1] for a in _actions(center)]
    assert actions.count("token.create") == 3 and actions.count("token.revoke") == 1


def test_audit_log_pages_and_filters(center: Center, client: TestClient) -> None:
    add_user(center, "ada", "admin")
    add_user(center, "otto", "operator")
    admin = _bearer(api_token(center, "ada", ["admin"]))
    for n in range(7):
        user = {"name": f"u{n}", "role": "viewer", "password": "password-123"}
        assert client.post("/api/v1/users", json=user, headers=admin).status_code == 201
    client.put("/api/v1/settings", json={"overdue_factor": 1.5}, headers=admin)
    assert (
        client.get(
            "/api/v1/audit", headers=_bearer(api_token(center, "otto", ["operate"]))
        ).status_code
        == 403
    )

    seen: list[str] = []
    before = None
    pages = 0
    while True:
        query = {"action": "user.create", "limit": 3} | ({"before": before} if before else {})
        page = client.get("/api/v1/audit", params=query, headers=admin).json()
        seen += [item["target"] for item in page["items"]]
        pages += 1
        before = page["next_before"]
        if before is None:
            break
    assert pages == 3
    assert seen == [f"user:u{n}" for n in reversed(range(7))]  # newest first
    settings = client.get("/api/v1/audit", params={"action": "settings.update"}, headers=admin)
    (row,) = settings.json()["items"]
    assert row["actor"] == "user:ada" and row["detail"] == {
        "overdue_factor": {"from": 1.25, "to": 1.5}
    }
    assert client.get("/api/v1/audit", params={"actor": "user:nobody"}, headers=admin).json() == {
        "items": [],
        "next_before": None,
    }
    later = (center.clock() + timedelta(hours=1)).isoformat()
    assert client.get("/api/v1/audit", params={"since": later}, headers=admin).json()["items"] == []
    assert client.get("/api/v1/audit", params={"limit": 501}, headers=admin).status_code == 422


def test_settings(center: Center, client: TestClient) -> None:
    add_user(center, "ada", "admin")
    add_user(center, "vera", "viewer")
    admin = _bearer(api_token(center, "ada", ["admin"]))
    vera = _bearer(api_token(center, "vera", ["read"]))
    shown = client.get("/api/v1/settings", headers=vera).json()
    assert shown["overdue_factor"]["value"] == 1.25 and shown["offline_after"]["value"] == 900
    assert (
        client.put("/api/v1/settings", json={"offline_after": 1200}, headers=vera).status_code
        == 403
    )
    # one bad value: nothing is stored
    bad = client.put(
        "/api/v1/settings", json={"offline_after": 1200, "overdue_factor": 99}, headers=admin
    )
    assert bad.status_code == 422 and "overdue_factor" in bad.json()["detail"]
    assert client.put("/api/v1/settings", json={"nope": 1}, headers=admin).status_code == 422
    assert (
        client.put("/api/v1/settings", json={"offline_after": 90.5}, headers=admin).status_code
        == 422
    )
    with center.sessions() as session:
        assert get_setting(session, "offline_after") == 900
    done = client.put("/api/v1/settings", json={"offline_after": 1200}, headers=admin)
    assert done.json()["offline_after"]["value"] == 1200
    with center.sessions() as session:
        assert get_setting(session, "offline_after") == 1200
        assert get_setting(session, "overdue_factor") == 1.25


def test_housekeeping_keeps_the_audit_log_as_long_as_set(center: Center) -> None:
    add_user(center, "ada", "admin")
    now = center.clock()
    with transaction(center.sessions) as session:
        session.add(Audit(at=now - timedelta(days=40), actor="user:ada", action="old"))
        session.add(Audit(at=now - timedelta(days=20), actor="user:ada", action="recent"))
        ada = session.scalars(select(User).where(User.name == "ada")).one()
        start_session(session, ada, now - timedelta(days=1))  # expired
        start_session(session, ada, now)
        change_settings(session, Actor("user:ada", now), {"audit_keep_days": 30})
    housekeeping(center)
    with center.sessions() as session:
        assert [a.action for a in session.scalars(select(Audit))] == ["recent", "settings.update"]
        assert [s.expires > now for s in session.scalars(select(WebSession))] == [True]


def test_housekeeping_forgets_old_alerts_and_deliveries(center: Center) -> None:
    add_user(center, "ada", "admin")
    now, day = center.clock(), timedelta(days=1)
    with transaction(center.sessions) as session:
        change_settings(session, Actor("user:ada", now), {"audit_keep_days": 30})
        target = AlertTarget(name="ops", kind="webhook", address="https://ops.invalid/hook")
        old = Alert(condition="a", event="run-failed", message="old", closed=now - 40 * day)
        recent = Alert(condition="b", event="run-failed", message="recent", closed=now - day)
        still_open = Alert(condition="c", event="run-failed", message="open")
        still_open.opened = now - 400 * day
        session.add_all([target, old, recent, still_open])
        session.flush()

        def delivery(alert: Alert, note: str, **fields: object) -> AlertDelivery:
            return AlertDelivery(
                alert_id=alert.id, target_id=target.id, kind="opened", error=note, **fields
            )

        session.add_all(
            [
                delivery(old, "of an old alert", next_try=now - 40 * day, sent=now - 40 * day),
                delivery(still_open, "sent long ago", next_try=now - 90 * day, sent=now - 90 * day),
                delivery(still_open, "sent lately", next_try=now - day, sent=now - day),
                delivery(still_open, "gave up long ago", next_try=now - 90 * day, attempts=8),
                delivery(still_open, "still trying", next_try=now - 90 * day, attempts=3),
                delivery(recent, "of a recent alert", next_try=now - day, sent=now - day),
            ]
        )
    housekeeping(center)
    with center.sessions() as session:
        assert sorted(a.message for a in session.scalars(select(Alert))) == ["open", "recent"]
        left = sorted(d.error or "" for d in session.scalars(select(AlertDelivery)))
        assert left == ["of a recent alert", "sent lately", "still trying"]
