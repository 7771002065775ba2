"""Fault injection: a backend wrapper that fails chosen operations on purpose.

Tests put it under ``RetryingBackend`` to check that transient failures are retried
and that permanent ones surface as one clear error. With ``signal`` it instead sends
that signal to its own process once, at the chosen call: a deterministic interruption
(after so many chunks) for the tests of SIGINT, SIGTERM and SIGHUP. Tests of the CLI
set ``$BLOCKVAULT_FAULTS`` (see ``from_spec``), which ``open_backend`` honours;
nothing else in the product uses it.
"""

from __future__ import annotations

import signal as signals
import threading
from collections.abc import Iterator

from blockvault.errors import StorageError, TransientStorageError
from blockvault.storage.backend import Backend

__all__ = ["FAULTS_ENV", "FaultyBackend"]

FAULTS_ENV = "BLOCKVAULT_FAULTS"  # e.g. "signal=TERM,every=37,operations=write"


class FaultyBackend(Backend):
    """``inner``, except that every ``every``-th call of an operation in ``operations``
    fails (before touching ``inner``) with a transient error, or with a permanent one
    when ``transient`` is false. ``every=1`` fails them all."""

    def __init__(
        self,
        inner: Backend,
        *,
        every: int = 2,
        operations: frozenset[str] = frozenset({"write"}),
        transient: bool = True,
        signal: int = 0,
        under: str = "",
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.capabilities = inner.capabilities
        self.every = every
        self.operations = operations
        self.transient = transient
        self.signal = signal  # instead of failing: sent to this process once
        self.under = under  # only calls on names starting with this count
        self.calls = 0
        self.failures = 0
        self._lock = threading.Lock()

    def _maybe_fail(self, operation: str, name: str) -> None:
        if operation not in self.operations or not name.startswith(self.under):
            return
        with self._lock:
            self.calls += 1
            fail = self.calls % self.every == 0 and not (self.signal and self.failures)
            if fail:
                self.failures += 1
        if fail and self.signal:
            # to the main thread, as a terminal's Ctrl-C usually lands: its wait for
            # workers is cut short there, not only when the next result comes in
            signals.pthread_kill(threading.main_thread().ident or 0, self.signal)
        elif fail:
            cls = TransientStorageError if self.transient else StorageError
            raise cls(f"{operation} {name}: injected fault", location=self.location)

    @classmethod
    def from_spec(cls, inner: Backend, spec: str) -> FaultyBackend:
        """``inner`` wrapped as ``spec`` says: comma-separated ``every=N``,
        ``operations=write+delete``, ``under=PREFIX`` (only names starting with it),
        ``permanent`` and ``signal=TERM`` (or INT, HUP)."""
        options = dict(item.partition("=")[::2] for item in spec.split(",") if item)
        name = options.get("signal", "")
        return cls(
            inner,
            every=int(options.get("every", "2")),
            operations=frozenset(options.get("operations", "write").split("+")),
            transient="permanent" not in options,
            signal=signals.Signals[f"SIG{name}"].value if name else 0,
            under=options.get("under", ""),
        )

    def read(self, name: str, limit: int | None = None) -> bytes:
        self._maybe_fail("read", name)
        return self.inner.read(name, limit)

    def write(self, name: str, data: bytes | memoryview) -> None:
        self._maybe_fail("write", name)
        self.inner.write(name, data)

    def write_batched(self, name: str, data: bytes | memoryview) -> None:
        self._maybe_fail("write", name)
        self.inner.write_batched(name, data)

    def flush(self) -> None:
        self._maybe_fail("flush", "")
        self.inner.flush()

    def sweep_partial(self, before: float) -> int:
        return self.inner.sweep_partial(before)

    def exists(self, name: str) -> bool:
        self._maybe_fail("exists", name)
        return self.inner.exists(name)

    def size(self, name: str) -> int:
        self._maybe_fail("size", name)
        return self.inner.size(name)

    def modified(self, name: str) -> float:
        self._maybe_fail("modified", name)
        return self.inner.modified(name)

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        self._maybe_fail("list", prefix)
        return self.inner.list_modified(prefix)

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self._maybe_fail("list", prefix)
        return self.inner.list_sizes(prefix)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._maybe_fail("list", prefix)
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self._maybe_fail("delete", name)
        self.inner.delete(name)

    def create(self) -> None:
        self._maybe_fail("create", "")
        self.inner.create()

    def close(self) -> None:
        self.inner.close()
