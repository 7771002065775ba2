"""Users' API tokens for scripts: issued with scopes and an expiry, shown once,
stored as their SHA-256, revoked rather than deleted (the audit log keeps naming
them).

A token may not hold a scope above the role of whoever issues it: a ``read`` token
cannot mint an ``admin`` one, even for an admin user, since a token's scopes are
narrowed only by its user's role when it is used (``auth.principal_of``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Final

from sqlalchemy.orm import Session

from blockvault.center.auth import ROLES, SCOPES, Role, audit, new_secret
from blockvault.center.models import ApiToken, User
from blockvault.center.users import Actor, check_name
from blockvault.errors import CenterUserError

__all__ = ["MAX_LIFETIME", "TOKEN_PREFIX", "issue_token", "revoke_token"]

MAX_LIFETIME: Final = timedelta(days=3650)
TOKEN_PREFIX: Final = "bv_"


def issue_token(
    session: Session,
    actor: Actor,
    user: User,
    name: str,
    scopes: Sequence[str],
    *,
    lifetime: timedelta | None,
    issuer_role: Role,
) -> tuple[str, ApiToken]:
    """A new token of ``user`` (its secret, to show once, and its row); ``lifetime``
    None: it lasts until revoked."""
    check_name(name, "a token name")
    if not scopes or any(s not in SCOPES for s in scopes):
        raise CenterUserError(f"give scopes from {', '.join(SCOPES)}", name=user.name)
    too_high = [s for s in scopes if ROLES.index(SCOPES[s]) > ROLES.index(issuer_role)]
    if too_high:
        raise CenterUserError(
            f"scope {too_high[0]} is above the {issuer_role} role that asks for it",
            name=user.name,
        )
    if lifetime is not None and not timedelta(minutes=1) <= lifetime <= MAX_LIFETIME:
        raise CenterUserError("a token lasts from a minute to ten years", name=user.name)
    secret, digest = new_secret(TOKEN_PREFIX)
    row = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=digest,
        scopes=sorted(set(scopes)),
        created=actor.at,
        expires=None if lifetime is None else actor.at + lifetime,
    )
    session.add(row)
    session.flush()
    detail: dict[str, object] = {"name": name, "scopes": row.scopes, "expires": row.expires}
    audit(
        session,
        actor.name,
        "token.create",
        f"token:{row.id}",
        _plain(detail),
        actor.address,
        at=actor.at,
    )
    return secret, row


def revoke_token(session: Session, actor: Actor, token: ApiToken) -> None:
    if not token.revoked:
        token.revoked = True
        audit(
            session,
            actor.name,
            "token.revoke",
            f"token:{token.id}",
            {"name": token.name},
            actor.address,
            at=actor.at,
        )


def _plain(detail: dict[str, object]) -> dict[str, object]:
    """JSON-ready: times as ISO 8601."""
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in detail.items()}
