"""Signals become ``Interrupted`` in the main thread, later inside ``shielded()``."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from blockvault import interrupts
from blockvault.errors import Interrupted


@pytest.fixture
def installed() -> Iterator[None]:
    previous = {number: signal.getsignal(number) for number in interrupts.SIGNALS}
    interrupts.install()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@pytest.mark.parametrize(
    ("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_raises_interrupted(installed: None, number: int, code: int) -> None:
    with pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), number)
        signal.sigtimedwait([], 0)  # a point where the handler surely has run
        for _ in range(1000):  # bytecodes: the handler runs between them
            pass
    assert caught.value.exit_code == code
    assert str(caught.value) == f"interrupted by {signal.Signals(number).name}"


def test_shielded_block_runs_whole_then_raises(installed: None) -> None:
    finished = False
    with pytest.raises(Interrupted) as caught, interrupts.shielded():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
        finished = True
    assert finished
    assert caught.value.exit_code == 143
