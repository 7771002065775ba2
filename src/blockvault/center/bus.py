"""Live updates inside the center: workers publish, browsers' event streams listen.

``publish`` may be called from any thread (job workers, the agent API); each
subscriber is an asyncio queue on the server's loop, bounded: a slow browser loses
its oldest updates, never the server's memory. Events are small dicts with a
``topic`` ("job", "run", "host", "alert", ...) and an ``id``; a page that gets one
re-reads what it shows (htmx), so a lost event costs at most a stale line until the
next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any, Final

__all__ = ["Bus"]

QUEUE_BOUND: Final = 256


class Bus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = []

    def publish(self, topic: str, **fields: Any) -> None:
        event = {"topic": topic, **fields}
        with self._lock:
            targets = list(self._queues)
        for loop, queue in targets:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_put, queue, event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the events published while the block runs."""
        entry = (asyncio.get_running_loop(), asyncio.Queue[dict[str, Any]](QUEUE_BOUND))
        with self._lock:
            self._queues.append(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._queues.remove(entry)


def _put(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    if queue.full():
        queue.get_nowait()  # the oldest goes
    queue.put_nowait(event)
