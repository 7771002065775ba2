"""``/events``: the center's bus as server-sent events for logged-in browsers.

Each bus event becomes one SSE event named by its topic, its fields as JSON data;
pages re-read the parts the topic touches (htmx's SSE extension, see base.html). An
event about a host (every publisher puts it in ``host_id``, or names a ``group``)
reaches only users who see that host's group. Every ``KEEPALIVE``
seconds without events the stream sends a comment, so proxies keep it open, and
checks the login again: a stream ends when its session does (logout, expiry, user
disabled).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Final

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from blockvault.center.auth import Principal, principal_of
from blockvault.center.context import Center
from blockvault.center.models import Group, Host

__all__ = ["KEEPALIVE", "install", "sse"]

KEEPALIVE: Final = 15.0  # seconds
_NO_GROUP: Final = object()


def sse(event: dict[str, Any]) -> bytes:
    """One event in the text/event-stream format (the topic is never user input, but
    a newline in it would start a new field: it is dropped)."""
    topic = "".join(c for c in str(event.get("topic", "message")) if c.isprintable())
    data = json.dumps(event, default=str, separators=(",", ":"))
    return f"event: {topic}\ndata: {data}\n\n".encode()


def _who(center: Center, request: Request) -> Principal | None:
    with center.sessions() as session:
        found = principal_of(request, session)
        session.commit()
    return None if found is None else found[0]


def _group_of(center: Center, event: dict[str, Any], cache: dict[int, str | None]) -> object:
    """The group of the host the event names, ``_NO_GROUP`` if it names none."""
    if "group" in event:
        group = event["group"]
        return group if isinstance(group, str) or group is None else str(group)
    host_id = event.get("host_id")
    if not isinstance(host_id, int):
        return _NO_GROUP
    if host_id not in cache:
        with center.sessions() as session:
            cache[host_id] = session.scalar(
                select(Group.name).join(Host, Host.group_id == Group.id).where(Host.id == host_id)
            )
    return cache[host_id]


def install(app: FastAPI, center: Center) -> None:
    """The /events route."""

    @app.get("/events", include_in_schema=False)
    async def events(request: Request) -> StreamingResponse:
        # authenticated by hand: a request-scoped database session would stay open
        # (and hold a pooled connection) for as long as the stream lives
        who = await asyncio.to_thread(_who, center, request)
        if who is None:
            raise HTTPException(401, "log in to follow live updates")

        async def stream() -> AsyncIterator[bytes]:
            groups: dict[int, str | None] = {}
            async with center.bus.subscribe() as queue:
                yield b": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except TimeoutError:
                        if await asyncio.to_thread(_who, center, request) is None:
                            return
                        yield b": keep-alive\n\n"
                        continue
                    if who.groups is not None:
                        group = await asyncio.to_thread(_group_of, center, event, groups)
                        if group is not _NO_GROUP and not who.sees(group):  # type: ignore[arg-type]
                            continue
                    yield sse(event)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
