"""Users, API tokens, the audit log and settings under /api/v1.

Users and the audit log are the admin's; everyone may see who they are (``/me``),
manage their own API tokens and read the settings. Every change goes through
``center.users``, ``center.tokens`` or ``center.settings``, which write its audit
row in the same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Final, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete, select

from blockvault.center.alerting.delivery import prune_history
from blockvault.center.auth import (
    DB,
    Admin,
    Principal,
    Role,
    Viewer,
    center_of,
    client_address,
    verify_password,
)
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import ApiToken, Audit, User, WebSession
from blockvault.center.settings import SETTINGS, all_settings, change_settings, get_setting
from blockvault.center.tokens import issue_token, revoke_token
from blockvault.center.users import Actor, add_user, delete_user, find_user, update_user
from blockvault.center.workers import Periodic
from blockvault.errors import (
    CenterSettingError,
    CenterUserError,
    CenterUserExists,
    CenterUserNotFound,
)

__all__ = ["housekeeping", "install"]

AUDIT_PAGE: Final = 100  # rows of the audit log per page by default
AUDIT_PAGE_MAX: Final = 500
Scope = Literal["read", "operate", "admin"]


class UserOut(BaseModel):
    name: str
    role: Role
    groups: list[str] | None = Field(description="host groups the user is limited to; null: all")
    disabled: bool
    created: datetime


class Me(UserOut):
    effective_role: Role = Field(description="the role narrowed by the token's scopes")
    via: Literal["session", "token"]


class PasswordChange(BaseModel):
    current: str = Field(max_length=1024)
    new: str = Field(min_length=8, max_length=1024)


class UserCreate(BaseModel):
    name: str = Field(max_length=64)
    role: Role
    password: str = Field(min_length=8, max_length=1024)
    groups: list[str] | None = Field(default=None, max_length=256)


class UserUpdate(BaseModel):
    """Only the fields sent change; ``groups: null`` means every group."""

    role: Role | None = None
    groups: list[str] | None = Field(default=None, max_length=256)
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    disabled: bool | None = None


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    scopes: list[str]
    created: datetime
    expires: datetime | None
    last_used: datetime | None
    revoked: bool


class TokenCreate(BaseModel):
    name: str = Field(max_length=64)
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    expires_in_days: int | None = Field(
        default=90, ge=1, le=3650, description="null: until revoked"
    )
    user: str | None = Field(default=None, description="another user's token (admin only)")


class TokenCreated(TokenOut):
    token: str = Field(description="the secret: shown this once, stored only as its hash")


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, object] | None
    address: str | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_before: int | None = Field(description="pass as before= for the next (older) page")


class SettingOut(BaseModel):
    value: float
    default: float
    low: float
    high: float
    help: str


def housekeeping(center: Center) -> None:
    """One round of the admin part's worker: the audit log, closed alerts and done
    alert deliveries beyond ``audit_keep_days`` and expired browser sessions go."""
    with transaction(center.sessions) as session:
        now = center.clock()
        keep = timedelta(days=get_setting(session, "audit_keep_days"))
        session.execute(delete(Audit).where(Audit.at < now - keep))
        prune_history(session, now - keep)
        session.execute(delete(WebSession).where(WebSession.expires <= now))


def install(app: FastAPI, center: Center) -> None:
    center.workers.append(Periodic("housekeeping", 3600, lambda: housekeeping(center)))
    router = APIRouter(prefix="/api/v1")
    _user_routes(router)
    _token_routes(router)
    _audit_and_settings_routes(router)
    app.include_router(router)
    app.add_exception_handler(CenterUserError, _refused)
    app.add_exception_handler(CenterSettingError, _refused)


async def _refused(_request: Request, exc: Exception) -> JSONResponse:
    """A change the accounts or settings refused: its one line, as 404 (no such
    user), 409 (exists already) or 422 (not so)."""
    status = 422
    if isinstance(exc, CenterUserNotFound):
        status = 404
    elif isinstance(exc, CenterUserExists):
        status = 409
    return JSONResponse({"detail": str(exc)}, status_code=status)


def actor_of(request: Request, who: Principal) -> Actor:
    """The audit log's view of this request: who, when (the center's clock), from where."""
    address = client_address(request)
    return Actor(who.actor, center_of(request).clock(), address)


def _user_out(user: User) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)


def _user_routes(router: APIRouter) -> None:
    @router.get("/me", tags=["users"], summary="Who am I", response_model=Me)
    def me(who: Viewer, session: DB) -> Me:
        user = session.get(User, who.user_id)
        assert user is not None  # the principal was read from it in this transaction
        return Me(**_user_out(user).model_dump(), effective_role=who.role, via=who.via)

    @router.post(
        "/me/password",
        tags=["users"],
        summary="Change my password (ends my browser sessions)",
        status_code=204,
    )
    def change_my_password(
        body: PasswordChange, who: Viewer, session: DB, request: Request
    ) -> Response:
        user = session.get(User, who.user_id)
        assert user is not None
        if who.via != "session" or not verify_password(user.password_hash, body.current):
            # a token is not the password: a stolen one must not lock its owner out
            raise HTTPException(403, "log in and give your current password")
        update_user(session, actor_of(request, who), who.name, password=body.new)
        return Response(status_code=204)

    @router.get("/users", tags=["users"], summary="List users", response_model=list[UserOut])
    def list_users(who: Admin, session: DB) -> list[UserOut]:
        return [_user_out(u) for u in session.scalars(select(User).order_by(User.name))]

    @router.post(
        "/users", tags=["users"], summary="Create a user", response_model=UserOut, status_code=201
    )
    def create_user(body: UserCreate, who: Admin, session: DB, request: Request) -> UserOut:
        actor = actor_of(request, who)
        return _user_out(add_user(session, actor, body.name, body.role, body.password, body.groups))

    @router.get("/users/{name}", tags=["users"], summary="One user", response_model=UserOut)
    def get_user(name: str, who: Admin, session: DB) -> UserOut:
        return _user_out(find_user(session, name))

    @router.patch(
        "/users/{name}",
        tags=["users"],
        summary="Change a user's role, groups, password or state",
        response_model=UserOut,
    )
    def change_user(
        name: str, body: UserUpdate, who: Admin, session: DB, request: Request
    ) -> UserOut:
        given = body.model_fields_set
        groups = {"groups": body.groups} if "groups" in given else {}
        user = update_user(
            session,
            actor_of(request, who),
            name,
            role=body.role,
            password=body.password,
            disabled=body.disabled,
            **groups,
        )
        return _user_out(user)

    @router.delete(
        "/users/{name}", tags=["users"], summary="Delete a user and its tokens", status_code=204
    )
    def remove_user(name: str, who: Admin, session: DB, request: Request) -> Response:
        delete_user(session, actor_of(request, who), name)
        return Response(status_code=204)


def _token_out(token: ApiToken, owner: str) -> TokenOut:
    return TokenOut(
        id=token.id,
        user=owner,
        name=token.name,
        scopes=token.scopes,
        created=token.created,
        expires=token.expires,
        last_used=token.last_used,
        revoked=token.revoked,
    )


def _token_routes(router: APIRouter) -> None:
    @router.get(
        "/tokens",
        tags=["tokens"],
        summary="List API tokens (yours; an admin's: everyone's)",
        response_model=list[TokenOut],
    )
    def list_tokens(who: Viewer, session: DB) -> list[TokenOut]:
        query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
        if not who.can("admin"):
            query = query.where(ApiToken.user_id == who.user_id)
        rows = session.execute(query.order_by(ApiToken.id))
        return [_token_out(token, owner) for token, owner in rows]

    @router.post(
        "/tokens",
        tags=["tokens"],
        summary="Create an API token (its secret is shown once)",
        response_model=TokenCreated,
        status_code=201,
    )
    def create_token(body: TokenCreate, who: Viewer, session: DB, request: Request) -> TokenCreated:
        if body.user is not None and body.user != who.name and not who.can("admin"):
            raise HTTPException(403, "only an admin makes tokens for other users")
        owner = find_user(session, body.user or who.name)
        lifetime = None if body.expires_in_days is None else timedelta(days=body.expires_in_days)
        secret, row = issue_token(
            session,
            actor_of(request, who),
            owner,
            body.name,
            body.scopes,
            lifetime=lifetime,
            issuer_role=who.role,
        )
        return TokenCreated(**_token_out(row, owner.name).model_dump(), token=secret)

    @router.delete(
        "/tokens/{token_id}", tags=["tokens"], summary="Revoke an API token", status_code=204
    )
    def revoke(token_id: int, who: Viewer, session: DB, request: Request) -> Response:
        token = session.get(ApiToken, token_id)
        if token is None or (token.user_id != who.user_id and not who.can("admin")):
            raise HTTPException(404, f"no API token {token_id} of yours")
        revoke_token(session, actor_of(request, who), token)
        return Response(status_code=204)


def _audit_and_settings_routes(router: APIRouter) -> None:
    @router.get(
        "/audit",
        tags=["audit"],
        summary="The audit log, newest first, a page at a time",
        response_model=AuditPage,
    )
    def audit_log(
        who: Admin,
        session: DB,
        actor: Annotated[str | None, Query(max_length=128)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        since: datetime | None = None,
        before: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)] = AUDIT_PAGE,
    ) -> AuditPage:
        query = select(Audit).order_by(Audit.id.desc()).limit(limit + 1)
        if actor is not None:
            query = query.where(Audit.actor == actor)
        if action is not None:
            query = query.where(Audit.action == action)
        if since is not None:
            if since.tzinfo is None:
                raise HTTPException(422, "since needs a time zone, such as 2026-01-01T00:00Z")
            query = query.where(Audit.at >= since)
        if before is not None:
            query = query.where(Audit.id < before)
        rows = list(session.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        return AuditPage(
            items=[AuditOut.model_validate(r, from_attributes=True) for r in rows],
            next_before=rows[-1].id if more else None,
        )

    @router.get(
        "/settings",
        tags=["settings"],
        summary="The center's settings with their defaults and bounds",
        response_model=dict[str, SettingOut],
    )
    def get_settings(who: Viewer, session: DB) -> dict[str, SettingOut]:
        return _settings_out(all_settings(session))

    @router.put(
        "/settings",
        tags=["settings"],
        summary="Change settings (only those sent)",
        response_model=dict[str, SettingOut],
    )
    def put_settings(
        body: dict[str, float], who: Admin, session: DB, request: Request
    ) -> dict[str, SettingOut]:
        return _settings_out(change_settings(session, actor_of(request, who), body))


def _settings_out(values: dict[str, float]) -> dict[str, SettingOut]:
    return {
        key: SettingOut(value=values[key], default=s.default, low=s.low, high=s.high, help=s.help)
        for key, s in SETTINGS.items()
    }
