"""The stall clock behind the worker's /livez: live while idle or advancing, not live once the
running generation has not advanced for longer than its limit."""

from __future__ import annotations

from services.inference.worker.liveness import StallClock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_worker_is_live_however_long_it_waits() -> None:
    clock = Clock()
    stall = StallClock(5.0, clock)
    clock.now += 3600
    assert stall.live() and stall.stalled_for() == 0.0


def test_generation_without_a_step_for_longer_than_the_limit_is_not_live() -> None:
    clock = Clock()
    stall = StallClock(5.0, clock)
    stall.begin()
    clock.now += 4.0
    assert stall.live()
    stall.beat()  # a step ended: the clock starts again
    clock.now += 5.0
    assert stall.live() and stall.stalled_for() == 5.0
    clock.now += 0.5
    assert not stall.live() and stall.stalled_for() == 5.5
    stall.beat()
    assert stall.live()
    clock.now += 60
    assert not stall.live()
    stall.end()  # the generation ended (even a failed one): nothing runs, nothing stalls
    assert stall.live() and stall.stalled_for() == 0.0
