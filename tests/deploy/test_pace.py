"""The cast sending rate: congestion slows it, loss the link has at any rate does not."""

from __future__ import annotations

from blockvault.deploy.sender import _Pace


def test_congestion_slows_down_and_recovers() -> None:
    pace = _Pace(1000.0, 1000.0)
    pace.update([0.0, 0.2, 0.3])  # the median receiver lost 20 %
    assert pace.rate == 600.0
    pace.update([0.0, 0.01, 0.02])  # slower helped: stay, then grow again
    assert pace.rate == 600.0
    pace.update([0.0, 0.0, 0.0])
    assert pace.rate == 750.0
    for _ in range(20):  # a path that takes 100 Mbit/s: the rate settles near it
        pace.update([max(0.0, 1 - 100 / pace.rate)])
    assert 50 <= pace.rate <= 110 and pace.baseline == 0.0


def test_loss_that_slowing_does_not_cure_is_the_links() -> None:
    pace = _Pace(1000.0, 1000.0)
    pace.update([0.08])
    assert pace.rate == 600.0
    pace.update([0.08])  # the same loss at 600: not ours
    assert (pace.rate, pace.baseline) == (1000.0, 0.08)
    for _ in range(5):
        pace.update([0.085])
    assert pace.rate == 1000.0
    pace.update([0.3])  # well above the link's own loss: congestion again
    assert pace.rate == 600.0


def test_one_lossy_receiver_does_not_set_the_pace() -> None:
    pace = _Pace(1000.0, 1000.0)
    pace.update([0.0, 0.0, 0.5])
    assert pace.rate == 1000.0


def test_overrun_mid_pass_slows_at_once_and_holds_after_the_pass() -> None:
    pace = _Pace(1000.0, 1000.0)
    pace.slow_down()
    pace.slow_down()
    assert pace.rate == 640.0
    pace.update([0.0])  # the pass ended clean because it slowed: no speed-up yet
    assert pace.rate == 640.0
    pace.update([0.0])
    assert pace.rate == 800.0
