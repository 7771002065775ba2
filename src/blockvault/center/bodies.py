"""One bound on every request body the center accepts (``BODY_LIMIT``), so no route
can be made to buffer an attacker's gigabytes: a body announced larger is refused 413
before a byte of it is read, one that grows larger while it streams is cut off with
413 at the first byte past the bound. A route that needs more declares its own
(``allow_larger``); routes that want less bound themselves below this."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BODY_LIMIT", "BodyLimit", "allow_larger", "install_body_limit"]

BODY_LIMIT: Final = 2 * 1024 * 1024  # bytes: a form, an API call, an agent's heartbeat


@dataclass
class BodyLimits:
    default: int = BODY_LIMIT
    larger: list[tuple[re.Pattern[str], int]] = field(default_factory=list)

    def of(self, path: str) -> int:
        return next((n for pattern, n in self.larger if pattern.fullmatch(path)), self.default)


class BodyLimit:
    """ASGI middleware enforcing ``limits`` on every HTTP request body."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.of(scope.get("path", ""))
        refusal = f"body larger than {limit} bytes"
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": refusal}, 413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # the handler's reading fails; FastAPI answers 413
                    raise HTTPException(413, refusal)
            return message

        await self.app(scope, counted, send)


def install_body_limit(app: FastAPI, default: int = BODY_LIMIT) -> None:
    app.state.body_limits = BodyLimits(default)
    app.add_middleware(BodyLimit, limits=app.state.body_limits)


def allow_larger(app: FastAPI, path: str, limit: int) -> None:
    """Let bodies of paths matching the regular expression ``path`` grow to ``limit``."""
    limits: BodyLimits = app.state.body_limits
    limits.larger.append((re.compile(path), limit))
