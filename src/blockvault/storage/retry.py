"""Retry transient storage failures with exponential backoff and jitter.

Remote backends raise ``TransientStorageError`` for failures that may pass when the
request is repeated (a dropped or reset connection, a timeout, a busy server, HTTP
5xx); everything else is final. ``RetryingBackend`` wraps any backend and repeats
such a request a bounded number of times, sleeping ``uniform(0, min(cap, base·2^n))``
between attempts ("full jitter": many threads that failed together do not come back
together). When the attempts are used up it raises one ``StorageError`` naming the
operation, the object and the last failure.

Every operation is safe to repeat: writes are atomic and replace, deletes of a missing
object are not errors, and reads have no effect.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from blockvault.errors import StorageError, TransientStorageError
from blockvault.storage.backend import Backend

__all__ = ["RetryPolicy", "RetryingBackend"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. The defaults ride out a restart of the
    server or a network blip of about half a minute."""

    attempts: int = 7  # in total, the first one included
    base_delay: float = 0.25  # seconds before the second attempt (before jitter)
    max_delay: float = 8.0  # cap of one sleep

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """Sleep before the attempt after ``failures`` failed ones (full jitter)."""
        step: float = self.base_delay * 2.0 ** (failures - 1)
        return rng() * min(self.max_delay, step)


RetryHook = Callable[[str, int, TransientStorageError], None]


class RetryingBackend(Backend):
    """``inner`` with transient failures retried; everything else passes through."""

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.location = inner.location
        self.capabilities = inner.capabilities
        self._sleep = sleep
        self._on_retry = on_retry

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return fn()
            except TransientStorageError as exc:
                failures += 1
                if failures >= self.policy.attempts:
                    raise StorageError(
                        f"{what}: gave up after {failures} attempts, last error: "
                        f"{exc.fields.get('detail') or exc}",
                        location=self.location,
                    ) from None
                if self._on_retry is not None:
                    self._on_retry(what, failures, exc)
                self._sleep(self.policy.delay(failures))

    def read(self, name: str, limit: int | None = None) -> bytes:
        # ObjectTooLarge is no TransientStorageError: it is final
        return self._call(f"reading {name}", lambda: self.inner.read(name, limit))

    def write(self, name: str, data: bytes | memoryview) -> None:
        self._call(f"writing {name}", lambda: self.inner.write(name, data))

    def write_batched(self, name: str, data: bytes | memoryview) -> None:
        self._call(f"writing {name}", lambda: self.inner.write_batched(name, data))

    def flush(self) -> None:
        # not retried: a failed flush dropped what it held, which a retry cannot bring back
        self.inner.flush()

    def sweep_partial(self, before: float) -> int:
        return self._call("removing partial writes", lambda: self.inner.sweep_partial(before))

    def exists(self, name: str) -> bool:
        return self._call(f"looking up {name}", lambda: self.inner.exists(name))

    def size(self, name: str) -> int:
        return self._call(f"looking up {name}", lambda: self.inner.size(name))

    def modified(self, name: str) -> float:
        return self._call(f"looking up {name}", lambda: self.inner.modified(name))

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        what = f"listing {prefix or '/'}"
        yield from self._call(what, lambda: [*self.inner.list_modified(prefix)])

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        what = f"listing {prefix or '/'}"
        yield from self._call(what, lambda: [*self.inner.list_sizes(prefix)])

    def list(self, prefix: str = "") -> Iterator[str]:
        # a listing cut off half way cannot be resumed, so it is taken whole
        names = self._call(f"listing {prefix or '/'}", lambda: [*self.inner.list(prefix)])
        yield from names

    def delete(self, name: str) -> None:
        self._call(f"deleting {name}", lambda: self.inner.delete(name))

    def create(self) -> None:
        self._call("creating the location", self.inner.create)

    def is_empty(self) -> bool:
        return self._call("listing /", self.inner.is_empty)

    def close(self) -> None:
        self.inner.close()
