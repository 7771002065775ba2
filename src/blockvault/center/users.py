"""The center's user accounts, changed the same way from the CLI and the admin API.

Every change writes its audit row in the same transaction, so no account changes
without a trace. Names and group names are short, printable and free of spaces
(they appear in the audit log, the dashboard and the command line); passwords are
8 to 1024 characters and stored only as their Argon2id hash.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockvault.center.auth import ROLES, Role, audit, hash_password
from blockvault.center.models import ApiToken, User, WebSession
from blockvault.errors import CenterUserError, CenterUserExists, CenterUserNotFound

__all__ = [
    "Actor",
    "add_user",
    "all_users",
    "check_name",
    "check_password",
    "delete_user",
    "find_user",
    "update_user",
    "user_view",
]

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
PASSWORD_LENGTH: Final = (8, 1024)
_UNCHANGED: Final = object()


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit log: ``user:alice`` through the API,
    ``local:root`` on the server's command line."""

    name: str
    at: datetime
    address: str | None = None


def check_name(name: str, what: str = "a user name") -> str:
    if not NAME.fullmatch(name):
        raise CenterUserError(
            f"{what} is 1-64 letters, digits and . _ @ - (starting with a letter or digit)",
            name=name,
        )
    return name


def check_password(name: str, password: str) -> str:
    low, high = PASSWORD_LENGTH
    if not low <= len(password) <= high:
        raise CenterUserError(f"a password is {low} to {high} characters", name=name)
    return password


def _role(name: str, role: str) -> Role:
    if role not in ROLES:
        raise CenterUserError(f"no role {role!r}: give one of {', '.join(ROLES)}", name=name)
    return role


def _groups(name: str, groups: Sequence[str] | None) -> list[str] | None:
    if groups is None:
        return None
    return sorted({check_name(g, "a group name") for g in groups})


def find_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise CenterUserNotFound(name=name)
    return user


def add_user(
    session: Session,
    actor: Actor,
    name: str,
    role: str,
    password: str,
    groups: Sequence[str] | None = None,
) -> User:
    """A new account; ``groups`` None: it sees every group."""
    check_name(name)
    user = User(
        name=name,
        role=_role(name, role),
        groups=_groups(name, groups),
        password_hash=hash_password(check_password(name, password)),
        created=actor.at,
    )
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise CenterUserExists(name=name)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # made meanwhile by another request; this transaction ends
        raise CenterUserExists(name=name) from None
    detail: dict[str, object] = {"role": user.role, "groups": user.groups}
    audit(session, actor.name, "user.create", f"user:{name}", detail, actor.address, at=actor.at)
    return user


def update_user(
    session: Session,
    actor: Actor,
    name: str,
    *,
    role: str | None = None,
    groups: Sequence[str] | object | None = _UNCHANGED,
    password: str | None = None,
    disabled: bool | None = None,
) -> User:
    """Change what is given. Any change ends the user's browser sessions (they log
    in again under the new terms); a disabled user's API tokens stop working too."""
    user = find_user(session, name)
    if (role is not None and role != "admin") or disabled:
        _keep_an_admin(session, user)
    changed: dict[str, object] = {}
    if role is not None and role != user.role:
        user.role = _role(name, role)
        changed["role"] = role
    if groups is not _UNCHANGED:
        user.groups = _groups(name, groups)  # type: ignore[arg-type]
        changed["groups"] = user.groups
    if password is not None:
        user.password_hash = hash_password(check_password(name, password))
        changed["password"] = "changed"  # never the password itself
    if disabled is not None and disabled != user.disabled:
        user.disabled = disabled
        changed["disabled"] = disabled
    if changed:
        session.execute(delete(WebSession).where(WebSession.user_id == user.id))
        audit(
            session, actor.name, "user.update", f"user:{name}", changed, actor.address, at=actor.at
        )
    return user


def delete_user(session: Session, actor: Actor, name: str) -> None:
    """Remove the account, its sessions and its API tokens."""
    user = find_user(session, name)
    _keep_an_admin(session, user)
    session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.delete(user)
    audit(session, actor.name, "user.delete", f"user:{name}", None, actor.address, at=actor.at)


def _keep_an_admin(session: Session, user: User) -> None:
    """Refuse to take away the last enabled admin: a center nobody can administer is
    repaired only on the server's shell."""
    if user.role != "admin" or user.disabled:
        return
    admins = session.scalars(select(User.id).where(User.role == "admin", User.disabled.is_(False)))
    if len(admins.all()) <= 1:
        raise CenterUserError("the last enabled admin must stay an enabled admin", name=user.name)


def all_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def user_view(user: User) -> dict[str, object]:
    """What may be shown of an account: never its password hash."""
    return {
        "name": user.name,
        "role": user.role,
        "groups": user.groups,
        "disabled": user.disabled,
        "created": user.created.isoformat(),
    }
