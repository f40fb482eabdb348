"""Bounds on the work strangers can make a replica do: a token bucket for calls that cost a
backend (a Postgres lookup, a Kubernetes token review, a HubSpot code exchange), and a
bounded memory of answers already known (mostly a "no"). Per replica, in memory, no I/O; called
only from the event loop."""

from __future__ import annotations

import time
from typing import Protocol

from broker.errors import RateLimitedCaller


class Counted(Protocol):
    """A metric child that counts refusals (``Counter.labels(...)``)."""

    def inc(self, amount: float = 1) -> None: ...


class Budget:
    """A token bucket: ``rate`` calls per second and two seconds of burst (at least one)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(1.0, 2 * rate)
        self._tokens = self._burst
        self._stamp = time.monotonic()

    @property
    def burst(self) -> float:
        return self._burst

    def take(self, now: float) -> float:
        """0 when a call may go ahead (a token taken), else seconds until one may."""
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return (1 - self._tokens) / self._rate
        self._tokens -= 1
        return 0.0

    def spend(self, now: float, refusal: str, *, code: str, counted: Counted) -> None:
        """Take a token, or count the refusal and raise :class:`RateLimitedCaller` (429
        ``code``, ``Retry-After`` when one will be there)."""
        wait = self.take(now)
        if wait > 0:
            counted.inc()
            raise RateLimitedCaller(refusal, retry_after=wait, code=code)

    def give_back(self) -> None:
        """Return a token: the call it paid for turned out not to need the budget."""
        self._tokens = min(self._burst, self._tokens + 1)


class Remembered:
    """Keys remembered (a known "no", or a verdict already paid for), each for ``seconds``;
    at most ``size`` (the oldest go first). One lifetime for all, so insertion order is
    expiry order."""

    def __init__(self, seconds: float, size: int = 10_000) -> None:
        self._seconds = seconds
        self._size = size
        self._until: dict[str, float] = {}

    def __contains__(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._until[key]
        return False

    def add(self, key: str) -> None:
        self._until.pop(key, None)
        while len(self._until) >= self._size:
            del self._until[next(iter(self._until))]
        self._until[key] = time.monotonic() + self._seconds

    def discard(self, key: str) -> None:
        self._until.pop(key, None)
