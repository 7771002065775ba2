"""Logging in and out of the dashboard, and the limit on guessing passwords.

A failed login is an audit row (``login.failed``, target the name tried, address the
client's); a name tried from one address gets ``MAX_FAILURES`` wrong passwords per
``WINDOW``, then 429 until the oldest failure leaves the window. Counting audit rows
instead of a counter in memory keeps the limit across restarts and across several
server processes, and leaves the guessing visible in the audit log.

The session cookie is ``HttpOnly; Secure; SameSite=Strict``: no script reads it, it
never travels unencrypted, and no other site's page can send it. After logging in,
the browser goes back to the page it asked for, if that is a path of this site.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Final
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from blockvault.center.auth import (
    DB,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    Viewer,
    audit,
    center_of,
    client_address,
    end_session,
    principal_of,
    start_session,
    verify_password,
)
from blockvault.center.context import Center
from blockvault.center.models import Audit, User
from blockvault.center.web.render import page

__all__ = ["MAX_FAILURES", "WINDOW", "install", "login_url", "retry_after", "safe_next"]

MAX_FAILURES: Final = 5
WINDOW: Final = timedelta(minutes=15)
MAX_NAME: Final = 64  # a longer name is no user's; only its start is recorded
MAX_PASSWORD: Final = 1024  # argon2 would hash a megabyte; refuse it unread


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site (``/hosts?x=1``), else ``/``: a login
    link must not send the browser to another site (``//evil``, ``https://evil``,
    ``/\\evil``)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(c in target for c in "\r\n\t\\"):
        return "/"
    return target


def login_url(request: Request) -> str:
    """Where a logged-out browser asking for this page is sent."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(safe_next(wanted), safe="")


def retry_after(session: Session, name: str, address: str, now: datetime) -> timedelta | None:
    """How long ``name`` from ``address`` must wait before the next try; None: it may
    try now."""
    since = now - WINDOW
    failures = select(Audit.at).where(
        Audit.action == "login.failed",
        Audit.target == name[:MAX_NAME],
        Audit.address == address,
        Audit.at > since,
    )
    count = session.scalar(select(func.count()).select_from(failures.subquery())) or 0
    if count < MAX_FAILURES:
        return None
    oldest = session.scalars(failures.order_by(Audit.at.desc()).limit(MAX_FAILURES)).all()[-1]
    return max(oldest + WINDOW - now, timedelta(seconds=1))


def install(app: FastAPI, center: Center) -> None:
    """The /login and /logout routes."""

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, session: DB, next: str = "/") -> Response:
        if principal_of(request, session) is not None:
            return RedirectResponse(safe_next(next), 303)
        return page(request, "login.html", next=safe_next(next), name="", error=None)

    @app.post("/login", include_in_schema=False)
    def log_in(
        request: Request,
        session: DB,
        name: Annotated[str, Form(max_length=MAX_NAME * 4)],
        password: Annotated[str, Form(max_length=MAX_PASSWORD)],
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        target = safe_next(next)
        address = client_address(request) or "unknown"
        now = center.clock()
        wait = retry_after(session, name, address, now)
        if wait is not None:
            minutes = -(-int(wait.total_seconds()) // 60)
            return page(
                request,
                "login.html",
                429,
                next=target,
                name=name,
                error=f"Too many failed logins for {name!r} from {address}: "
                f"try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            )
        user = session.scalar(select(User).where(User.name == name))
        if user is None or user.disabled or not verify_password(user.password_hash, password):
            audit(session, f"user:{name[:MAX_NAME]}", "login.failed", name[:MAX_NAME],
                  address=address, at=now)  # fmt: skip
            return page(
                request,
                "login.html",
                401,
                next=target,
                name=name,
                error="Wrong name or password.",
            )
        cookie, _row = start_session(session, user, now, address)
        audit(session, f"user:{user.name}", "login", user.name, address=address, at=now)
        response = RedirectResponse(target, 303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(SESSION_LIFETIME.total_seconds()),
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def log_out(request: Request, session: DB, who: Viewer) -> Response:
        end_session(session, request.cookies.get(SESSION_COOKIE, ""))
        address = client_address(request)
        audit(
            session, who.actor, "logout", who.name, address=address, at=center_of(request).clock()
        )
        response = RedirectResponse("/login", 303)
        response.delete_cookie(
            SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict"
        )
        return response
