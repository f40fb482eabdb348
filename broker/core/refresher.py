"""The proactive refresher: every replica renews tokens ahead of expiry (DESIGN.md,
"Proactive refresh"), so callers almost never wait for HubSpot.

Each pass claims Postgres leases for a batch of portals whose ``refresh_after`` has come
(``FOR UPDATE SKIP LOCKED``: replicas split the work), then refreshes them through the same
protocol as interactive callers, within the per-app rate shared by all replicas (interactive
refreshes take priority). How many run at once follows the load (:class:`Slots`): it grows
while work is waiting and every slot is busy, and halves when the app's rate turns
refreshes away, between a floor and ``refresher_concurrency``. A pass claims only what free
slots can start at once, so no lease waits for a slot. The passes, the healing sweep
(every :data:`HEAL_INTERVAL`, ``needs_reauth`` portals with a response journaled after
they were marked) and the portal-state gauges are background loops
(:class:`~broker.core.tasks.BackgroundLoop`): a failing pass never stops them; ``close()``
lets in-flight refreshes finish and releases the leases claimed but not started.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.models import Lease, PortalKey, PortalState
from broker.core.ports import DueLease, LeaseRepository, PortalRepository, RateLimiter
from broker.core.refresh import RefreshEngine
from broker.core.tasks import BackgroundLoop
from broker.errors import BrokerError

log = structlog.get_logger(__name__)

#: How often the healing sweep looks for needs_reauth portals with a late journaled grant.
HEAL_INTERVAL = 10.0
#: The fewest proactive refreshes a replica keeps in flight when work is waiting.
SLOTS_FLOOR = 8


class Slots:
    """How many proactive refreshes run at once: additive increase, multiplicative decrease.

    A replica needs about ``rate x latency`` refreshes in flight to keep up with ``rate``
    (Little's law): 8 slots at 50 ms of HubSpot latency cap it near 160/s, however high the
    app's rate. While work is waiting and every slot is busy, the target grows by a quarter,
    at most once per observed refresh time (one "round trip", as TCP grows its window); when
    the app's rate turns a refresh away (the shared limit, not this replica, is the bound),
    it halves, also at most once per refresh time. Bounded by ``floor`` and ``ceiling``."""

    def __init__(self, floor: int, ceiling: int, clock: Callable[[], float] = time.monotonic):
        self.ceiling = max(1, ceiling)
        self.floor = min(floor, self.ceiling)
        self.target = self.floor
        self._clock = clock
        self._latency = 0.05  # EWMA of one refresh's duration (s), until measured
        self._changed = clock()
        self._limited = False
        metrics.REFRESHER_SLOTS.set(self.target)

    def observe(self, seconds: float) -> None:
        self._latency += 0.1 * (seconds - self._latency)

    def rate_limited(self) -> None:
        if self._settled():
            self._set(max(self.floor, self.target // 2))
        self._limited = True

    def saturated(self) -> None:
        """Every slot busy and more work due."""
        if not self._settled():
            return
        if self._limited:
            self._limited = False  # turned away during the last refresh time: hold
        else:
            self._set(min(self.ceiling, self.target + max(1, math.ceil(self.target / 4))))

    def _set(self, target: int) -> None:
        self.target = target
        metrics.REFRESHER_SLOTS.set(target)

    def _settled(self) -> bool:
        """True at most once per refresh time."""
        now = self._clock()
        if now - self._changed < self._latency:
            return False
        self._changed = now
        return True


class ProactiveRefresher:
    def __init__(
        self,
        settings: Settings,
        *,
        portals: PortalRepository,
        leases: LeaseRepository,
        engine: RefreshEngine,
        limiter: RateLimiter,
        replica_id: str,
    ) -> None:
        self._settings = settings
        self._portals = portals
        self._leases = leases
        self._engine = engine
        self._limiter = limiter
        self._owner = f"{replica_id}:refresher:{secrets.token_hex(4)}"
        self._slots = Slots(SLOTS_FLOOR, settings.refresher_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._backlog = False
        # Jittered by half so replicas started together do not scan in lockstep; a pass
        # that leaves more due runs again at once.
        self._passes = BackgroundLoop(
            metrics.Background.REFRESHER,
            self._pass,
            interval=settings.refresher_interval,
            jitter=0.5,
        )
        self._heals = BackgroundLoop(
            metrics.Background.HEAL, engine.heal_from_journal, interval=HEAL_INTERVAL
        )
        # Portals by state: a scrape never scans the table.
        self._gauges = BackgroundLoop(
            metrics.Background.PORTAL_GAUGES, self._update_gauges, interval=15.0
        )

    def start(self) -> None:
        self._passes.start()
        self._heals.start()
        self._gauges.start()

    def stop_claiming(self) -> None:
        """Start no more refreshes (a replica draining); those in flight go on."""
        self._passes.stop_soon()
        self._heals.stop_soon()

    async def finish(self, timeout: float) -> None:
        """Claim nothing more and let the refreshes in flight finish (a response HubSpot
        already sent is stored), for at most ``timeout`` seconds (a lease bounds each)."""
        await self._passes.stop()
        await self._heals.stop()
        await self._gauges.close()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout)

    async def close(self) -> None:
        await self.finish(self._settings.shutdown_timeout)

    async def _update_gauges(self) -> None:
        counts = await self._portals.count_by_state()
        for state in PortalState:
            metrics.PORTALS.labels(state.value).set(counts.get(state.value, 0))

    async def _pass(self) -> bool:
        """One pass of the loop; True when more may be due at once."""
        paused = self._engine.hubspot_paused_for()
        if paused > 0:  # the circuit is open: claiming leases now would only churn
            await self._passes.pause(paused)
            return True
        return await self.run_once()

    async def run_once(self) -> bool:
        """Claim what the free slots can start now and start it. True when more may be due
        right away: the slots were busy, or the claim came back full. Waits for a quarter
        of the slots to free up first, so a claim is shared by several refreshes."""
        slots, batch_size = self._slots, self._settings.refresher_batch
        free = min(batch_size, slots.target - len(self._inflight))
        # Nothing in flight: free is min(batch_size, target), never below this bound.
        if free < max(1, min(slots.target // 4, batch_size)):
            if self._backlog:  # the last claim came back full: more is due
                slots.saturated()
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            return True
        batch = await self._leases.claim_due(
            self._owner, limit=free, lease_seconds=self._settings.lease_seconds
        )
        try:
            waits = await self._slots_of_rate(batch)
        except BaseException:
            for due in batch:  # none started: give them back for the next pass
                await asyncio.shield(self._leases.release_lease(due.lease))
            raise
        for due, wait in zip(batch, waits, strict=True):
            name = f"refresh {due.key}"
            task = asyncio.create_task(self._refresh(due.key, due.lease, wait), name=name)
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        self._backlog = len(batch) == free
        return self._backlog

    async def _slots_of_rate(self, batch: list[DueLease]) -> list[float]:
        """The app's rate for a claim, one round trip per app (all at once): 0 for each portal
        that may go now, else the seconds to wait (the claim's order decides who goes first)."""
        apps: dict[str, int] = {}
        for due in batch:
            apps[due.key.app] = apps.get(due.key.app, 0) + 1
        asked = [self._limiter.acquire_many(app, count) for app, count in apps.items()]
        answers = dict(zip(apps, await asyncio.gather(*asked), strict=True))
        waits = []
        for due in batch:
            granted, wait = answers[due.key.app]
            waits.append(0.0 if granted > 0 else wait)
            answers[due.key.app] = (granted - 1, wait)
        return waits

    async def _refresh(self, key: PortalKey, lease: Lease, wait: float) -> None:
        try:
            if self._passes.stopping:
                await self._leases.release_lease(lease)
                return
            if wait > 0:
                # Over the app's rate: give the portal back for a later pass, and hold the
                # slot meanwhile (fewer claims while the rate is the bound).
                self._slots.rate_limited()
                await self._leases.release_lease(lease)
                await asyncio.sleep(min(wait, 1.0))
                return
            started = time.monotonic()
            await self._engine.refresh_with_lease(key, lease)
            self._slots.observe(time.monotonic() - started)
        except BrokerError as exc:
            log.info("refresher.portal_failed", portal=str(key), code=exc.code)
        except Exception:
            metrics.backend_failed("any", "refresher_bug")
            log.exception("refresher.portal_crashed", portal=str(key))
