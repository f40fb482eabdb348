"""Units of a portal's budget taken ahead, a few at a time, while plenty is left.

One store call per gateway request (a Redis round trip, a Lua script) was a third of a
gateway request's CPU. While a portal's window has at least half its limit left (and its
day half its daily limit), a take asks for up to :data:`_MOST` units at once
(``left // 8``, so at most an eighth of what is left per replica and take) and hands them
to the following requests of this replica. Near the limit it asks for one unit at a time,
as before, so the shared limit and the queue's fairness hold where they matter. A unit is
counted in the shared store from its taking (and again from its answer, by ``settle``), so
a unit held here never lets a replica exceed the limit; units not used within
:data:`_TTL` seconds are dropped (counted, unused: only while plenty is left), and so are
all held units of a portal HubSpot answered 429. While a portal takes ahead, one take at a
time is out for it on this replica: the requests that find no unit held wait for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from broker.core.ports.budget import BudgetState

_MOST = 16
_TTL = 0.5


class Leases:
    def __init__(self) -> None:
        #: Per portal: the state of the take that got the units, the next unit, how many
        #: are left, until when they may be used (monotonic).
        self._held: dict[str, tuple[BudgetState, int, int, float]] = {}
        #: Portals whose next take asks for more than one unit, and their take out.
        self._ahead: dict[str, int] = {}
        self._flights: dict[str, asyncio.Future[None]] = {}

    async def take(self, portal: str, take: Callable[[int], Awaitable[BudgetState]]) -> BudgetState:
        """One unit of the portal: a held one, else ``take(n)`` from the store (n units)."""
        while (held := self.pop(portal)) is None:
            flight = self._flights.get(portal)
            if flight is None:
                break
            await asyncio.shield(flight)
        if held is not None:
            return held
        asked = ahead = self._ahead.get(portal, 1)
        if ahead > 1:
            self._flights[portal] = asyncio.get_running_loop().create_future()
        try:
            state = await take(asked)
            if asked > 1 and state.wait > 0:  # not that many: one, as usual
                asked = 1
                state = await take(1)
        finally:
            if ahead > 1:
                self._flights.pop(portal).set_result(None)
        if (ahead := self.size(state)) > 1:
            self._ahead[portal] = ahead
        else:
            self._ahead.pop(portal, None)
        if asked > 1 and state.wait == 0:
            self._held[portal] = (state, state.unit - 1, asked - 1, time.monotonic() + _TTL)
        return state

    def pop(self, portal: str) -> BudgetState | None:
        """A held unit of the portal (the take's state with that unit), or None."""
        held = self._held.get(portal)
        if held is None:
            return None
        state, unit, count, until = held
        if until < time.monotonic():
            del self._held[portal]
            return None
        if count > 1:
            self._held[portal] = (state, unit - 1, count - 1, until)
        else:
            del self._held[portal]
        return replace(state, unit=unit)

    def size(self, state: BudgetState | None) -> int:
        """How many units to take next, after the portal's last take saw ``state``."""
        if state is None or state.wait > 0:
            return 1
        left = state.limit - state.used
        if 2 * left < state.limit:
            return 1
        if state.daily_limit and 2 * (state.daily_limit - state.used_today) < state.daily_limit:
            return 1
        return max(1, min(_MOST, left // 8))

    def drop(self, portal: str) -> None:
        """HubSpot answered 429: no unit held, the next take one unit."""
        self._held.pop(portal, None)
        self._ahead.pop(portal, None)
