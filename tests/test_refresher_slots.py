"""The refresher's adaptive slots (``broker.core.refresher.Slots``) on a clock the test moves:
they grow while work waits, at most once per refresh time, stop at the ceiling, halve when
the app's rate turns refreshes away, and never go below the floor."""

from __future__ import annotations

from broker.core.refresher import Slots


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _saturate(slots: Slots, clock: Clock, times: int = 40) -> None:
    for _ in range(times):
        clock.now += 0.1
        slots.saturated()


def test_slots_grow_once_per_refresh_time_up_to_the_ceiling() -> None:
    clock = Clock()
    slots = Slots(8, 128, clock)
    slots.observe(0.05)
    assert slots.target == 8
    slots.saturated()  # less than one refresh time since the start: no change yet
    assert slots.target == 8
    clock.now += 0.1
    slots.saturated()
    assert slots.target == 10
    slots.saturated()  # the same instant: one step per refresh time
    assert slots.target == 10
    _saturate(slots, clock)
    assert slots.target == 128


def test_slots_halve_when_rate_limited_and_keep_the_floor() -> None:
    clock = Clock()
    slots = Slots(8, 128, clock)
    _saturate(slots, clock)
    assert slots.target == 128
    clock.now += 0.1
    slots.rate_limited()
    assert slots.target == 64
    slots.saturated()  # a denial in this refresh time: no growth until the next
    assert slots.target == 64
    for _ in range(10):
        clock.now += 0.1
        slots.rate_limited()
    assert slots.target == 8


def test_a_ceiling_below_the_floor_wins() -> None:
    slots = Slots(8, 2, Clock())
    assert (slots.floor, slots.target, slots.ceiling) == (2, 2, 2)
