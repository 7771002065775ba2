"""Who an agent is (center-agents owns this module; until its enrolment and
challenge-signature sign-in land here, only the contract's ``CurrentHost`` exists so
the agent API can be built against it): a live agent token of a host not revoked."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select

from blockvault.center.auth import DB, center_of, secret_hash
from blockvault.center.models import AgentToken, Host

__all__ = ["CurrentHost", "current_host"]


def current_host(request: Request, session: DB) -> Host:
    """The host whose agent token the request carries; 401 without a live one, 403
    for a revoked host."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise HTTPException(401, "send the agent token: Authorization: Bearer ...")
    token = session.scalar(
        select(AgentToken).where(AgentToken.token_hash == secret_hash(header[7:].strip()))
    )
    if token is None or token.expires <= center_of(request).clock():
        raise HTTPException(401, "agent token unknown or expired: sign in again")
    host = session.get(Host, token.host_id)
    if host is None or host.revoked is not None:
        raise HTTPException(403, "this agent was revoked")
    return host


CurrentHost = Annotated[Host, Depends(current_host)]
