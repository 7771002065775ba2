"""Who an agent is: enrolment by one-time token, then challenge and signature.

An agent enrols once with an enrolment token an admin created (random, stored as its
SHA-256, limited in time and uses) and its own Ed25519 public key. Afterwards it
proves itself by signing a nonce the center chose (single use, ``NONCE_TTL``) and
gets a short-lived agent token (``AGENT_TOKEN_LIFETIME``, stored hashed). No
password, and no long-lived secret of the center's, ever crosses the wire.

Agent tokens live in their own table: they open ``/agent/v1`` (``CurrentHost``) and
nothing else, as user tokens open ``/api/v1`` and not the agent API. A revoked host's
tokens are deleted, and ``CurrentHost`` refuses it even if one survived.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, HTTPException, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from blockvault.center.auth import DB, center_of, new_secret, secret_hash
from blockvault.center.link.identity import HOST_NAME
from blockvault.center.models import AgentToken, EnrolToken, Group, Host

__all__ = [
    "AGENT_TOKEN_LIFETIME",
    "HOST_NAME",
    "NONCE_TTL",
    "CurrentHost",
    "Enrolled",
    "challenge",
    "current_host",
    "enrol",
    "public_key_bytes",
    "revoke",
    "sign_in",
]

NONCE_TTL: Final = timedelta(seconds=60)
AGENT_TOKEN_LIFETIME: Final = timedelta(hours=1)


@dataclass(frozen=True)
class Enrolled:
    host: Host
    group: str | None
    rekeyed: bool  # an existing host took a new key


def public_key_bytes(text: str) -> bytes:
    """The raw 32 bytes of an Ed25519 public key sent as base64; 400 otherwise."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise HTTPException(400, "public_key: the raw Ed25519 key (32 bytes), base64")
    return raw


def enrol(session: Session, token: str, name: str, public_key: str, now: datetime) -> Enrolled:
    """Register ``name`` with ``public_key`` if ``token`` is a live enrolment token
    (403 otherwise: unknown, expired, used up, or bound to another host)."""
    public_key_bytes(public_key)
    row = session.scalar(
        select(EnrolToken).where(EnrolToken.token_hash == secret_hash(token)).with_for_update()
    )
    if row is None or row.expires <= now or row.uses_left <= 0:
        raise HTTPException(403, "enrolment token unknown, expired or used up: ask for a new one")
    existing = session.scalar(select(Host).where(Host.name == name))
    if row.host_id is not None:  # a re-key: this host only, and it takes the new key
        host = session.get(Host, row.host_id)
        if host is None or host.name != name:
            raise HTTPException(403, "this enrolment token re-keys another host")
        host.public_key, host.revoked, host.nonce_hash = public_key, None, None
        session.execute(delete(AgentToken).where(AgentToken.host_id == host.id))
        rekeyed = True
    else:
        if existing is not None:
            raise HTTPException(
                409, f"a host named {name} is enrolled: re-key it, or enrol with another --name"
            )
        host = Host(name=name, group_id=row.group_id, public_key=public_key, enrolled=now)
        session.add(host)
        rekeyed = False
    row.uses_left -= 1
    session.flush()
    group = session.get(Group, host.group_id) if host.group_id is not None else None
    return Enrolled(host, group.name if group else None, rekeyed)


def _live_host(session: Session, name: str) -> Host:
    host = session.scalar(select(Host).where(Host.name == name))
    if host is None:
        raise HTTPException(401, "no host of that name is enrolled")
    if host.revoked is not None:
        raise HTTPException(403, "this host was revoked: enrol it again with a new token")
    return host


def challenge(session: Session, name: str, now: datetime) -> str:
    """A new nonce for host ``name`` to sign (replacing any earlier one)."""
    host = _live_host(session, name)
    nonce = secrets.token_urlsafe(32)
    host.nonce_hash, host.nonce_expires = secret_hash(nonce), now + NONCE_TTL
    return nonce


def sign_in(
    session: Session, name: str, nonce: str, signature: str, now: datetime
) -> tuple[str, datetime] | str:
    """An agent token for host ``name`` if ``signature`` is its key's signature of its
    open ``nonce``, else why not. The nonce is spent either way, so the caller must
    commit a refusal too (it is returned, not raised, for that reason)."""
    host = _live_host(session, name)
    expected, expires = host.nonce_hash, host.nonce_expires
    host.nonce_hash = host.nonce_expires = None
    if expected is None or expires is None or expires <= now:
        return "no open challenge: ask for a new one"
    if not hmac.compare_digest(expected, secret_hash(nonce)):
        return "not the open challenge: ask for a new one"
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key_bytes(host.public_key))
        key.verify(base64.b64decode(signature, validate=True), nonce.encode())
    except (InvalidSignature, binascii.Error, ValueError):
        return "the signature does not match the host's key"
    stale = (AgentToken.host_id == host.id) & (AgentToken.expires <= now)
    session.execute(delete(AgentToken).where(stale))
    token, digest = new_secret("ag_")
    session.add(AgentToken(token_hash=digest, host_id=host.id, expires=now + AGENT_TOKEN_LIFETIME))
    return token, now + AGENT_TOKEN_LIFETIME


def revoke(session: Session, host: Host, now: datetime) -> None:
    """Refuse ``host`` from now on: its tokens die at once, its key opens nothing."""
    host.revoked, host.nonce_hash, host.nonce_expires = now, None, None
    session.execute(delete(AgentToken).where(AgentToken.host_id == host.id))
    session.execute(delete(EnrolToken).where(EnrolToken.host_id == host.id))


def current_host(request: Request, session: DB) -> Host:
    """The host whose agent token the request carries; 401 without a live one, 403
    for a revoked host."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise HTTPException(401, "send the agent token: Authorization: Bearer ...")
    now = center_of(request).clock()
    token = session.scalar(
        select(AgentToken).where(AgentToken.token_hash == secret_hash(header[7:].strip()))
    )
    if token is None or token.expires <= now:
        raise HTTPException(401, "agent token unknown or expired: sign in again")
    host = session.get(Host, token.host_id)
    if host is None or host.revoked is not None:
        raise HTTPException(403, "this host was revoked")
    return host


# a handler's parameter: the authenticated, non-revoked host of an agent request
CurrentHost = Annotated[Host, Depends(current_host)]
