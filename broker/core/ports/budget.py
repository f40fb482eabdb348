"""The shared per-portal HubSpot rate budget (Redis), for :mod:`broker.core.budget`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Limits:
    """What the budget of one portal allows: ``per_window`` requests per ``window_ms``
    (HubSpot's ten-secondly rolling window) and ``per_day`` per UTC day (0: not enforced)."""

    per_window: int
    window_ms: int
    per_day: int = 0


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A portal's budget as the store saw it: ``wait`` seconds before a unit can be taken
    (0: one was taken, or none was asked for), the units used in the current window and
    today, and the limits in force (lowered by what HubSpot's headers said)."""

    wait: float
    used: int
    limit: int
    used_today: int
    daily_limit: int
    #: The unit taken (an id for :meth:`BudgetStore.settle`), 0 when none was.
    unit: int = 0

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class Observed:
    """What HubSpot's ``X-HubSpot-RateLimit-*`` headers said (None: not sent)."""

    remaining: int | None = None
    maximum: int | None = None
    interval_ms: int | None = None
    daily_remaining: int | None = None
    daily: int | None = None


class BudgetStore(Protocol):
    """Counts every replica's use of a portal's budget. ``portal`` is an opaque key (app
    and hub). Each call is atomic and uses the store's clock. Raises
    :class:`~broker.errors.UpstreamError` when the store is unreachable (the caller then
    counts locally)."""

    async def take(self, portal: str, limits: Limits, units: int, *, force: bool) -> BudgetState:
        """Take ``units`` when the window and the day have room (else take nothing and say
        how long to wait); ``force``: take them anyway (usage reported after the fact).
        ``units`` 0 reads the state."""
        ...

    async def settle(
        self, portal: str, limits: Limits, units: Sequence[int], seen: Observed | None
    ) -> None:
        """HubSpot answered the requests of ``units``: they count from now (HubSpot
        counted it somewhere between its taking and now, and must not see it free before
        this store does); when HubSpot said how much is left (``seen``): count the use it
        saw and this store did not (other callers of the account), and a lower limit."""
        ...

    async def pause(self, portal: str, seconds: float) -> None:
        """HubSpot answered 429: take nothing for ``seconds``."""
        ...
