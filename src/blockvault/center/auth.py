"""Who is asking, and may they: users, roles, sessions, API tokens, CSRF, audit.

Roles rank viewer < operator < admin: a viewer reads, an operator also runs, restores
and deploys, an admin also changes plans, users, agents and settings. A user with
``groups`` sees and acts only on hosts of those groups; ``None`` means every group.
An API token's scopes narrow its user's role, never widen it.

Secrets (session cookies, API tokens, enrolment tokens) are random, shown once, and
stored only as their SHA-256: a copy of the database opens nothing. Passwords are
hashed with Argon2id. A browser's unsafe requests (POST, PUT, PATCH, DELETE) must
carry the session's CSRF token (header ``X-CSRF-Token`` or form field
``csrf_token``); token requests carry none, as no browser sends them by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center.context import Center
from blockvault.center.models import ApiToken, Audit, User, WebSession

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "DB",
    "ROLES",
    "SCOPES",
    "SESSION_COOKIE",
    "Admin",
    "Operator",
    "Principal",
    "Role",
    "Viewer",
    "audit",
    "center_of",
    "client_address",
    "create_user",
    "database",
    "end_session",
    "hash_password",
    "new_secret",
    "principal_of",
    "require",
    "secret_hash",
    "start_session",
    "verify_password",
]

Role = Literal["viewer", "operator", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
SCOPES: Final[dict[str, Role]] = {"read": "viewer", "operate": "operator", "admin": "admin"}
SESSION_COOKIE: Final = "bv_session"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
SESSION_LIFETIME: Final = timedelta(hours=12)
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_HASHER: Final = PasswordHasher()  # Argon2id with argon2-cffi's current defaults


@dataclass(frozen=True)
class Principal:
    user_id: int
    name: str
    role: Role  # effective: the user's role narrowed by the token's scopes
    groups: frozenset[str] | None  # None: every group
    via: Literal["session", "token"]

    @property
    def actor(self) -> str:
        return f"user:{self.name}"

    def can(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, group: str | None) -> bool:
        """May this user see a host in ``group`` (None: a host in no group)?"""
        return self.groups is None or (group is not None and group in self.groups)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def new_secret(prefix: str) -> tuple[str, str]:
    """A fresh secret to show once (``prefix`` + 43 URL-safe characters) and the hash
    to store."""
    token = prefix + secrets.token_urlsafe(32)
    return token, secret_hash(token)


def secret_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(
    session: Session, name: str, password: str, role: Role, groups: list[str] | None = None
) -> User:
    user = User(name=name, password_hash=hash_password(password), role=role, groups=groups)
    session.add(user)
    session.flush()
    return user


def start_session(
    session: Session, user: User, now: datetime, address: str | None = None
) -> tuple[str, WebSession]:
    """A new login: the cookie value (shown once) and its row."""
    token, digest = new_secret("s_")
    row = WebSession(
        token_hash=digest,
        user_id=user.id,
        csrf=secrets.token_urlsafe(32),
        created=now,
        expires=now + SESSION_LIFETIME,
        address=address,
    )
    session.add(row)
    session.flush()
    return token, row


def end_session(session: Session, token: str) -> None:
    row = session.scalar(select(WebSession).where(WebSession.token_hash == secret_hash(token)))
    if row is not None:
        session.delete(row)


def audit(
    session: Session,
    actor: str,
    action: str,
    target: str | None = None,
    detail: dict[str, object] | None = None,
    address: str | None = None,
    *,
    at: datetime,
) -> None:
    session.add(
        Audit(at=at, actor=actor, action=action, target=target, detail=detail, address=address)
    )


def client_address(request: Request) -> str | None:
    """The peer's address, as the audit log and the login limit record it."""
    return request.client.host if request.client else None


def center_of(request: Request) -> Center:
    center: Center = request.app.state.center
    return center


def database(request: Request) -> Iterator[Session]:
    """One session per request, committed when the handler returns without error."""
    with center_of(request).sessions() as session, session.begin():
        yield session


# a handler's parameter: the request's session. scope="function" commits it before the
# response leaves: a client that follows a redirect or reads after a write sees the write
DB = Annotated[Session, Depends(database, scope="function")]


def principal_of(request: Request, session: Session) -> tuple[Principal, WebSession | None] | None:
    """Who made this request (a bearer API token, else the session cookie), with the
    session row for CSRF checks; None: nobody logged in."""
    now = center_of(request).clock()
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = session.scalar(
            select(ApiToken).where(ApiToken.token_hash == secret_hash(header[7:].strip()))
        )
        if token is None or token.revoked or (token.expires and token.expires <= now):
            return None
        user = session.get(User, token.user_id)
        if user is None or user.disabled:
            return None
        token.last_used = now
        allowed = [SCOPES[s] for s in token.scopes if s in SCOPES]
        role = min([user.role, *allowed], key=ROLES.index) if allowed else "viewer"
        return _principal(user, role, "token"), None
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    row = session.scalar(select(WebSession).where(WebSession.token_hash == secret_hash(cookie)))
    if row is None or row.expires <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return _principal(user, user.role, "session"), row


def _principal(user: User, role: str, via: Literal["session", "token"]) -> Principal:
    groups = None if user.groups is None else frozenset(user.groups)
    return Principal(user.id, user.name, role, groups, via)  # type: ignore[arg-type]


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the request's principal if it holds ``role``; 401 when
    nobody is logged in, 403 when the role is too low or a browser's CSRF token is
    missing or wrong."""

    async def dependency(request: Request, session: DB) -> Principal:
        # a database wait (SQLite's writer lock) must not stall the event loop
        found = await run_in_threadpool(principal_of, request, session)
        if found is None:
            raise HTTPException(401, "log in or send an API token")
        principal, web = found
        if web is not None and request.method not in _SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER)
            if sent is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            ):
                form = await request.form()
                field = form.get(CSRF_FIELD)
                sent = field if isinstance(field, str) else None
            if sent is None or not hmac.compare_digest(sent, web.csrf):
                raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        if not principal.can(role):
            raise HTTPException(403, f"this needs the {role} role")
        request.state.principal = principal
        request.state.csrf = web.csrf if web is not None else None
        return principal

    return dependency


# a handler's parameter: the request's principal, if it holds that role
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
