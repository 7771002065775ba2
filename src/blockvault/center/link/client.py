"""What the agent-side parts need from the agent's connection to the center."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

__all__ = ["LinkClient"]


class LinkClient(Protocol):
    """An authenticated HTTPS connection to the center (pinned certificate, agent
    token renewed as needed): ``call`` returns the response of one request to an
    ``/agent/v1`` path, or raises ``CenterUnreachable``."""

    def call(
        self, method: str, path: str, *, json: Any = None, timeout: float = 30
    ) -> httpx.Response: ...
