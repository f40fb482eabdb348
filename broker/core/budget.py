"""One HubSpot rate budget per portal, shared by every caller and replica (DESIGN.md,
"HubSpot gateway").

HubSpot limits each installed account: 110 requests per rolling 10 s for a public app
(``budget_per_ten_seconds``), plus a daily limit when one applies (``budget_per_day``). The
budget counts every request sent for a portal in a store all replicas share (Redis: a
sliding log per portal, one atomic script per take) and follows what HubSpot says: its
``X-HubSpot-RateLimit-Remaining``/``-Max``/``-Interval-Milliseconds`` (and ``-Daily*``)
headers lower the limit and count use the broker did not see, and a 429 pauses the portal
for its window (or ``Retry-After``).

While plenty is left, a replica takes a few units per store call and settles answers in
batches (:mod:`.budget_lease`, :mod:`.budget_settle`): one Redis call per request was a
third of a gateway request's CPU.

**Queue.** A gateway request that finds no budget waits in its portal's queue on this
replica: one pump per portal takes budget as it frees and hands it to waiters round-robin
between callers, each caller getting ``gateway_weight`` turns per round (its priority), so a
caller sending ten times as much does not get ten times the share. A request that cannot
expect budget within ``budget_max_wait`` (its caller's place in the queue over the rate), or
that waited that long, or that finds ``budget_queue`` requests waiting, is answered 429
``portal_budget_exhausted`` with ``Retry-After`` by the gateway: nothing is sent to HubSpot.

**Redis down.** Each replica counts alone, in memory, with half of each limit: two replicas
stay within HubSpot's limit; with more, HubSpot's own headers and 429s (which pause the
portal here) take over. The shared count resumes when Redis answers again.

**Token-route callers** (services that still call HubSpot themselves) read the same budget
(``GET /v1/portals/{hub_id}/budget``) and report what they used (``POST``), which the gateway
then counts as taken.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from broker import metrics_gateway as gm
from broker.config import Settings
from broker.core.budget_lease import Leases
from broker.core.budget_settle import Settling
from broker.core.models import Caller, PortalKey
from broker.core.ports.budget import BudgetState, BudgetStore, Limits, Observed
from broker.errors import BudgetExhausted, UpstreamError

log = structlog.get_logger(__name__)

#: HubSpot's rolling window, and what a use is counted longer here: a unit is taken a moment
#: before its request reaches HubSpot (the queue's hand-off, the connection), so a window
#: counted exactly would free a unit a moment before HubSpot's does.
_WINDOW_MS = 10_000
_MARGIN_MS = 300
_HEADERS = {
    b"x-hubspot-ratelimit-remaining": "remaining",
    b"x-hubspot-ratelimit-max": "maximum",
    b"x-hubspot-ratelimit-interval-milliseconds": "interval_ms",
    b"x-hubspot-ratelimit-daily-remaining": "daily_remaining",
    b"x-hubspot-ratelimit-daily": "daily",
}


def portal_id(key: PortalKey) -> str:
    """The budget's key: HubSpot counts per app and account (every user of a user-level
    app shares it)."""
    return f"{key.app}:{key.hub_id}"


class LocalStore:
    """:class:`BudgetStore` in this process's memory: the fallback while Redis is down
    (with the limits halved by :class:`PortalBudget`), on the monotonic clock."""

    def __init__(self) -> None:
        self._log: dict[str, deque[float]] = {}
        self._days: dict[str, tuple[int, int]] = {}
        self._paused: dict[str, float] = {}
        self._lowered: dict[str, int] = {}

    async def take(self, portal: str, limits: Limits, units: int, *, force: bool) -> BudgetState:
        now = time.monotonic()
        window = limits.window_ms / 1000
        hits = self._log.setdefault(portal, deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        limit = min(limits.per_window, self._lowered.get(portal, limits.per_window))
        day = int(time.time() // 86400)
        on, used_today = self._days.get(portal, (day, 0))
        used_today = used_today if on == day else 0
        wait = 0.0
        if units and not force:
            if self._paused.get(portal, 0.0) > now:
                wait = self._paused[portal] - now
            elif limits.per_day and used_today + units > limits.per_day:
                wait = 86400 - time.time() % 86400
            elif len(hits) + units > limit:
                wait = max(0.001, hits[0] + window - now) if hits else window
        if units and wait == 0.0:
            hits.extend([now] * units)
            used_today += units
            self._days[portal] = (day, used_today)
        return BudgetState(wait, len(hits), limit, used_today, limits.per_day)

    async def settle(
        self, portal: str, limits: Limits, units: Sequence[int], seen: Observed | None
    ) -> None:
        """Here a unit counts from its taking (the fallback is approximate anyway: half the
        limit leaves room for that)."""
        if seen is None:
            return
        if seen.maximum is not None and 0 < seen.maximum < limits.per_window:
            self._lowered[portal] = seen.maximum
        if seen.remaining is not None:
            limit = min(limits.per_window, seen.maximum or limits.per_window)
            state = await self.take(portal, limits, 0, force=False)
            missing = limit - seen.remaining - state.used
            if missing > 0:
                await self.take(portal, limits, missing, force=True)

    async def pause(self, portal: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._paused[portal] = max(until, self._paused.get(portal, 0.0))


@dataclass(eq=False)
class _Waiter:
    caller: int
    #: Resolved with the unit taken for it.
    granted: asyncio.Future[int] = field(default_factory=asyncio.Future)


class _Queue:
    """The requests waiting for one portal's budget on this replica, by caller."""

    def __init__(self) -> None:
        self.by_caller: dict[int, deque[_Waiter]] = {}
        self.weights: dict[int, int] = {}
        self.order: deque[int] = deque()  # callers with waiters, whose turn is first
        self.turns_left = 0
        self.size = 0
        self.pump: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    def add(self, caller: Caller) -> _Waiter:
        waiter = _Waiter(caller.id)
        line = self.by_caller.get(caller.id)
        if line is None:
            line = self.by_caller[caller.id] = deque()
            self.order.append(caller.id)
        self.weights[caller.id] = caller.gateway_weight
        line.append(waiter)
        self.size += 1
        self.wake.set()
        return waiter

    def ahead(self, caller: Caller) -> float:
        """Requests served before a new one of ``caller`` would be, round-robin."""
        mine = len(self.by_caller.get(caller.id, ())) + 1
        total = sum(self.weights[c] for c in self.order if c != caller.id) + caller.gateway_weight
        return mine * total / caller.gateway_weight

    def first(self) -> _Waiter | None:
        """The waiter whose turn it is (waiters given up on are dropped)."""
        while self.order:
            caller = self.order[0]
            line = self.by_caller[caller]
            while line and line[0].granted.done():
                line.popleft()
                self.size -= 1
            if line:
                if self.turns_left <= 0:
                    self.turns_left = self.weights.get(caller, 1)
                return line[0]
            self._next_caller(drop=True)
        return None

    def granted(self, unit: int) -> None:
        """The first waiter got ``unit``: it leaves, and its caller used one turn."""
        caller = self.order[0]
        line = self.by_caller[caller]
        line.popleft().granted.set_result(unit)
        self.size -= 1
        self.turns_left -= 1
        if not line:
            self._next_caller(drop=True)
        elif self.turns_left <= 0:
            self._next_caller(drop=False)

    def _next_caller(self, *, drop: bool) -> None:
        caller = self.order.popleft()
        if drop:
            del self.by_caller[caller]
        else:
            self.order.append(caller)
        self.turns_left = 0


class Slot:
    """One unit of a portal's budget, held while its request is out."""

    def __init__(self, budget: PortalBudget, portal: str) -> None:
        self._budget = budget
        self._portal = portal
        self.observed: Observed | None = None
        self.status = 0

    def saw(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """HubSpot's answer: its status and rate-limit headers (handled on exit)."""
        self.status = status
        found: dict[str, int] = {}
        for name, value in headers:
            field_name = _HEADERS.get(name.lower())
            if field_name is not None and value.isdigit():
                found[field_name] = int(value)
        if found:
            self.observed = Observed(**found)


class PortalBudget:
    def __init__(self, settings: Settings, *, store: BudgetStore) -> None:
        self._store = store
        self._local = LocalStore()
        self._limits = Limits(
            settings.budget_per_ten_seconds, _WINDOW_MS + _MARGIN_MS, settings.budget_per_day
        )
        self._halved = Limits(
            max(1, settings.budget_per_ten_seconds // 2),
            _WINDOW_MS + _MARGIN_MS,
            settings.budget_per_day // 2,
        )
        self._max_wait = settings.budget_max_wait
        self._queue_max = settings.budget_queue
        self._queues: dict[str, _Queue] = {}
        self._apps: set[str] = set()
        self._settling = Settling(self._learn)
        self._leases = Leases()

    # --- the gateway ----------------------------------------------------------------------
    @asynccontextmanager
    async def slot(self, caller: Caller, key: PortalKey) -> AsyncIterator[Slot]:
        """Wait for one unit of the portal's budget (queued fairly), hold it while the
        request is out, and learn from HubSpot's answer. Raises :class:`BudgetExhausted`
        when the unit cannot be had within ``budget_max_wait``."""
        portal = portal_id(key)
        started = time.monotonic()
        queue = self._queues.get(portal)
        unit = 0
        if queue is None or not queue.size:
            state = await self._take(portal, key.app, 1)
            if state.wait > 0:
                unit = await self._wait(portal, key.app, caller, state.wait)
            else:
                unit = state.unit
        else:
            unit = await self._wait(portal, key.app, caller, 0.0)
        gm.QUEUE_SECONDS.observe(time.monotonic() - started)
        slot = Slot(self, portal)
        try:
            yield slot
        finally:
            self._settling.add(portal, slot.status, unit, slot.observed)

    async def _wait(self, portal: str, app: str, caller: Caller, wait: float) -> int:
        """Queue for a unit; the unit taken."""
        queue = self._queues.get(portal)
        if queue is None:
            queue = self._queues[portal] = _Queue()
        rate = self._limits.per_window / (self._limits.window_ms / 1000)
        expected = max(wait, queue.ahead(caller) / rate)
        if queue.size >= self._queue_max or expected > self._max_wait:
            self._refuse(expected)
        waiter = queue.add(caller)
        if queue.pump is None or queue.pump.done():
            queue.pump = asyncio.create_task(self._pump(portal, app, queue), name="budget pump")
        gm.QUEUED.inc()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.granted), self._max_wait)
        except TimeoutError:
            if not waiter.granted.done():
                waiter.granted.cancel()
                self._refuse(queue.ahead(caller) / rate)
            return waiter.granted.result()
        finally:
            gm.QUEUED.dec()

    def _refuse(self, expected: float) -> None:
        gm.HUBSPOT_429_AVOIDED.inc()
        raise BudgetExhausted(
            "the portal's HubSpot rate budget cannot be had within "
            f"{self._max_wait:g} s; retry later",
            retry_after=max(1.0, expected - self._max_wait),
        )

    async def _pump(self, portal: str, app: str, queue: _Queue) -> None:
        """Hands the portal's budget to its waiters as it frees, round-robin."""
        try:
            while True:
                if queue.first() is None:
                    queue.wake.clear()
                    if not queue.size:
                        break
                    await queue.wake.wait()
                    continue
                state = await self._take(portal, app, 1)
                if state.wait > 0:
                    await asyncio.sleep(min(state.wait, 1.0))
                    continue
                if queue.first() is None:  # gave up meanwhile: the unit stays used
                    continue
                queue.granted(state.unit)
        except Exception:
            log.exception("budget.pump_failed", app=app)
        finally:
            if self._queues.get(portal) is queue and not queue.size:
                del self._queues[portal]

    # --- token-route callers --------------------------------------------------------------
    async def read(self, key: PortalKey) -> BudgetState:
        return await self._take(portal_id(key), key.app, 0)

    async def report(self, key: PortalKey, used: int) -> BudgetState:
        """Usage reported by a caller that called HubSpot itself."""
        return await self._take(portal_id(key), key.app, used, force=True)

    # --- the stores -----------------------------------------------------------------------
    async def _take(self, portal: str, app: str, units: int, *, force: bool = False) -> BudgetState:
        if units != 1 or force:
            return await self._take_from_store(portal, app, units, force=force)

        def take(units: int) -> Awaitable[BudgetState]:
            return self._take_from_store(portal, app, units, force=False)

        return await self._leases.take(portal, take)  # one unit, for a gateway request

    async def _take_from_store(
        self, portal: str, app: str, units: int, *, force: bool
    ) -> BudgetState:
        try:
            state = await self._store.take(portal, self._limits, units, force=force)
            store = gm.Store.REDIS
        except UpstreamError:
            state = await self._local.take(portal, self._halved, units, force=force)
            store = gm.Store.LOCAL
        if units and state.wait == 0:
            gm.BUDGET_TAKES.labels(store).inc(units)
        self._gauges(app, state)
        return state

    async def _learn(
        self, portal: str, status: int, units: list[int], seen: Observed | None
    ) -> None:
        """After HubSpot answered (or did not): the units count from now; HubSpot's headers
        and a 429 (a pause for its window) are taken in."""
        if status == 429:
            gm.HUBSPOT_429_RECEIVED.inc()
            self._leases.drop(portal)
            interval = (seen and seen.interval_ms) or _WINDOW_MS
            try:
                await self._store.pause(portal, interval / 1000)
            except UpstreamError:
                await self._local.pause(portal, interval / 1000)
        try:
            await self._store.settle(portal, self._limits, units, seen)
        except UpstreamError:
            await self._local.settle(portal, self._halved, units, seen)

    def _gauges(self, app: str, state: BudgetState) -> None:
        if app not in self._apps:
            if len(self._apps) >= gm.BUDGET_MAX_APPS:
                return
            self._apps.add(app)
        gm.BUDGET_USED.labels(app).set(state.used / max(1, state.limit))
        gm.BUDGET_LEFT.labels(app).set(state.left)
