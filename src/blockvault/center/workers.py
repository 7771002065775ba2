"""The center's background work: each worker calls one function every few seconds in
a thread of its own until the server stops. A worker's exception is reported and
the worker goes on (the next round may succeed); it never takes the server down."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Periodic"]

_log = logging.getLogger("blockvault.center")


@dataclass
class Periodic:
    name: str
    every: float  # seconds between the end of one round and the start of the next
    run: Callable[[], None]
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Run a round now (e.g. a job was queued) instead of at the next tick."""
        self._wakeup.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run()
            except Exception:
                _log.exception("center worker %s failed; it runs again", self.name)
            self._wakeup.wait(self.every)
            self._wakeup.clear()

    def __post_init__(self) -> None:
        self._wakeup = threading.Event()
