"""HubSpot's answers to gateway requests, told to the budget's store in batches.

Each answer re-counts its unit from its end and carries HubSpot's rate-limit headers
(:meth:`BudgetStore.settle`). One store call per answer was, after the take, the gateway's
largest cost; the answers of one portal within :data:`_DELAY` seconds (at most
:data:`_MOST`) now go in one call, with the last headers seen. A unit then counts from
a moment after its answer (later, never earlier: the safe side). A 429 is told at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from broker.core.ports.budget import Observed

log = structlog.get_logger(__name__)

_DELAY = 0.01
_MOST = 64

#: (portal, HubSpot's status, the units answered, the last headers seen)
Learn = Callable[[str, int, list[int], Observed | None], Awaitable[None]]


@dataclass(eq=False)
class _Batch:
    units: list[int] = field(default_factory=list)
    seen: Observed | None = None


class Settling:
    def __init__(self, learn: Learn) -> None:
        self._learn = learn
        self._batches: dict[str, _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, portal: str, status: int, unit: int, seen: Observed | None) -> None:
        """Off the request's path: its answer does not wait for a store round trip."""
        if status == 429:
            self._start(self._learn(portal, status, [unit], seen))
            return
        batch = self._batches.get(portal)
        if batch is None:
            batch = self._batches[portal] = _Batch()
            self._start(self._flush(portal, batch))
        batch.units.append(unit)
        if seen is not None:
            batch.seen = seen
        if len(batch.units) >= _MOST:
            del self._batches[portal]  # full: the next answer starts another

    async def _flush(self, portal: str, batch: _Batch) -> None:
        await asyncio.sleep(_DELAY)
        if self._batches.get(portal) is batch:
            del self._batches[portal]
        await self._learn(portal, 0, batch.units, batch.seen)

    def _start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("budget.settle_failed", error=repr(task.exception()))
