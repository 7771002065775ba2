"""The agent API under /agent/v1: enrolment, authentication, heartbeats and reports.

Agents dial out and the center never calls them: an agent enrols once, signs in by
signing a challenge, and then sends a heartbeat every ``interval`` seconds carrying
its inventory and the runs the center has not acknowledged; the reply carries the
central plans when the agent's copy is stale. Jobs use the same token (api/jobs.py).
Every field is bounded: an agent may be hostile.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blockvault.center import agentauth, fleet
from blockvault.center.agentauth import HOST_NAME, CurrentHost
from blockvault.center.auth import DB, audit, client_address
from blockvault.center.context import Center

__all__ = ["install"]


class EnrolRequest(BaseModel):
    token: str = Field(max_length=128)
    name: str = Field(pattern=HOST_NAME)
    public_key: str = Field(max_length=64)
    os: str = Field("", max_length=255)
    agent_version: str = Field("", max_length=64)


class EnrolReply(BaseModel):
    host_id: int
    group: str | None


class ChallengeRequest(BaseModel):
    host: str = Field(pattern=HOST_NAME)


class ChallengeReply(BaseModel):
    nonce: str


class SessionRequest(BaseModel):
    host: str = Field(pattern=HOST_NAME)
    nonce: str = Field(max_length=128)
    signature: str = Field(max_length=128)


class SessionReply(BaseModel):
    token: str
    expires: datetime


class Heartbeat(BaseModel):
    inventory: dict[str, Any] = Field(default_factory=dict)
    runs: list[fleet.ReportedRun] = Field(
        default_factory=list, max_length=fleet.MAX_RUNS_PER_REPORT
    )
    plans_version: str | None = Field(None, max_length=64)


class CentralPlanDoc(BaseModel):
    id: int
    name: str
    version: int
    spec: dict[str, Any]


class HeartbeatReply(BaseModel):
    plans_version: str
    plans: list[CentralPlanDoc] | None = None  # only when the agent's copy is stale
    interval: int  # seconds until the next heartbeat
    acked: list[int]  # the reported runs the center now holds: do not send them again


PREFIX: Final = "/agent/v1"
# bytes of a request body, read before anything else looks at it (a peer need not be
# authenticated to send one): small for sign-in, an inventory and 100 runs for a heartbeat
BODY_LIMITS: Final = {
    f"{PREFIX}/enrol": 4096,
    f"{PREFIX}/challenge": 1024,
    f"{PREFIX}/session": 1024,
    f"{PREFIX}/heartbeat": fleet.MAX_INVENTORY + fleet.MAX_RUNS_PER_REPORT * 10 * 1024,
}


class BoundedBodies:
    """ASGI middleware: the bodies of the paths in ``limits`` are read whole, up to
    their limit, before the app sees them; a longer one is answered 413 unread."""

    def __init__(self, app: ASGIApp, limits: dict[str, int]) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnected: let the app see it
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                too_large = JSONResponse({"detail": f"body larger than {limit} bytes"}, 413)
                await too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def install(app: FastAPI, center: Center) -> None:
    router = APIRouter(prefix=PREFIX, tags=["agent"])
    app.add_middleware(BoundedBodies, limits=BODY_LIMITS)

    @router.post("/enrol", summary="Agent: enrol with a one-time token and a public key")
    def enrol(body: EnrolRequest, request: Request, session: DB) -> EnrolReply:
        """Register a machine with a one-time enrolment token and its own public key."""
        now = center.clock()
        done = agentauth.enrol(session, body.token, body.name, body.public_key, now)
        host = done.host
        host.os, host.agent_version, host.address = (
            body.os,
            body.agent_version,
            client_address(request),
        )
        action = "host.rekey" if done.rekeyed else "host.enrol"
        audit(
            session,
            f"agent:{host.name}",
            action,
            host.name,
            address=client_address(request),
            at=now,
        )
        fleet.publish_after_commit(
            session, center.bus, "host", id=host.id, host_id=host.id, state="enrolled"
        )
        return EnrolReply(host_id=host.id, group=done.group)

    @router.post("/challenge", summary="Agent: get a nonce to sign")
    def challenge(body: ChallengeRequest, session: DB) -> ChallengeReply:
        """A nonce for the host's agent to sign (single use, valid for a minute)."""
        return ChallengeReply(nonce=agentauth.challenge(session, body.host, center.clock()))

    @router.post(
        "/session",
        summary="Agent: trade a signed nonce for a session token",
        response_model=SessionReply,
    )
    def sign_in(body: SessionRequest, session: DB) -> SessionReply | JSONResponse:
        """A short-lived agent token for a correctly signed nonce (401 otherwise; the
        nonce is spent either way)."""
        signed = agentauth.sign_in(session, body.host, body.nonce, body.signature, center.clock())
        if isinstance(signed, str):  # returned, not raised: the spent nonce is committed
            return JSONResponse({"detail": signed}, status_code=401)
        return SessionReply(token=signed[0], expires=signed[1])

    @router.post("/heartbeat", summary="Agent: report inventory and runs, receive plans")
    def heartbeat(
        body: Heartbeat, host: CurrentHost, request: Request, session: DB
    ) -> HeartbeatReply:
        """The agent is alive: its inventory, its unacknowledged runs; the reply holds
        the central plans if the agent's copy is stale."""
        if len(json.dumps(body.inventory)) > fleet.MAX_INVENTORY:
            raise HTTPException(413, f"inventory larger than {fleet.MAX_INVENTORY} bytes")
        now = center.clock()
        was_online = host.last_seen is not None and now - host.last_seen <= fleet.offline_after(
            session
        )
        host.last_seen, host.address, host.inventory = now, client_address(request), body.inventory
        for key in ("os", "agent_version"):
            value = body.inventory.get(key)
            if isinstance(value, str):
                setattr(host, key, value[:64] if key == "agent_version" else value[:255])
        acked, added = fleet.record_runs(session, host, body.runs, now)
        for run in added:
            fleet.publish_after_commit(
                session, center.bus, "run", id=run.id, host_id=host.id, status=run.status
            )
        if not was_online or added:
            fleet.publish_after_commit(
                session, center.bus, "host", id=host.id, host_id=host.id, state="online"
            )
        plans = fleet.plans_for(session, host)
        version = fleet.plans_version(plans)
        return HeartbeatReply(
            plans_version=version,
            plans=None
            if body.plans_version == version
            else [
                CentralPlanDoc(id=p.id, name=p.name, version=p.version, spec=p.spec) for p in plans
            ],
            interval=center.config.heartbeat_interval,
            acked=acked,
        )

    app.include_router(router)
