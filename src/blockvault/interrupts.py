"""Signals become ``Interrupted``, except inside a commit, where they wait for its end.

The CLI (and any program embedding the library that wants the same behaviour) calls
``install()`` once in its main thread: SIGINT, SIGTERM and SIGHUP then raise
``Interrupted`` in that thread, so ``with`` blocks and ``finally`` clauses clean up
(session markers, temporary files, worker threads) on the way out. A few steps must
not be cut in two because the one-line report that follows would otherwise have to
guess (did the manifest get written?): they run ``with shielded():``, and a signal
arriving then is raised when the block ends. A second signal while one waits is the
user insisting: the process dies of it at once, as without a handler.

The library never installs handlers itself; without ``install()``, ``shielded()``
does nothing and Python's own ``KeyboardInterrupt`` behaviour is unchanged.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from blockvault.errors import Interrupted

__all__ = ["SIGNALS", "install", "shielded"]

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_depth = 0  # nesting of shielded() blocks (main thread only: handlers run there)
_pending: Interrupted | None = None


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` in the main thread."""
    for number in SIGNALS:
        signal.signal(number, _handle)


def _handle(number: int, frame: FrameType | None) -> None:
    global _pending
    interrupted = Interrupted(signal.Signals(number).name, number)
    if _depth == 0:
        raise interrupted
    if _pending is not None:  # asked twice: stop now, as the default action would
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    _pending = interrupted


@contextmanager
def shielded() -> Iterator[None]:
    """Run the block whole; a signal that arrives meanwhile is raised at its end."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            interrupted, _pending = _pending, None
            raise interrupted  # replaces (and chains) an error the block raised
