"""Cache invalidation across replicas: when a portal stops serving tokens (needs_reauth,
revoked, quarantined), every replica must drop its cached access token.

Primary path: a message on Redis pub/sub, which every replica (this one included) turns
into a cache drop at once. Fallback: each replica polls Postgres every
``invalidation_poll_seconds`` for portals that stopped serving, so a replica that missed
the message (Redis down, a reconnect) stops serving within that bound plus one query.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.models import PortalKey
from broker.core.ports import Coordinator, PortalRepository
from broker.core.tasks import cancel_and_wait
from broker.core.tokens import TokenService
from broker.errors import BrokerError

log = structlog.get_logger(__name__)


class Invalidations:
    def __init__(
        self,
        settings: Settings,
        *,
        coordinator: Coordinator,
        portals: PortalRepository,
        tokens: TokenService,
    ) -> None:
        self._interval = settings.invalidation_poll_seconds
        self._coordinator = coordinator
        self._portals = portals
        self._tokens = tokens
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._coordinator.on_invalidation(self._on_message)
        self._task = asyncio.create_task(self._poll(), name="invalidation-poll")

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def publish(self, key: PortalKey) -> None:
        """Drop ``key`` here at once and tell every other replica."""
        self._tokens.invalidate(key)
        if not await self._coordinator.publish_invalidation(str(key)):
            log.warning("invalidation.publish_failed", portal=str(key))

    def _on_message(self, text: str) -> None:
        try:
            key = PortalKey.parse(text)
        except ValueError:
            log.warning("invalidation.bad_message")
            return
        self._tokens.invalidate(key)

    async def _poll(self) -> None:
        since: datetime | None = None
        while True:
            try:
                keys, since = await self._portals.stopped_since(since)
                for key in keys:
                    self._tokens.invalidate(key)
            except BrokerError:
                metrics.BACKEND_ERRORS.labels("postgres", "invalidation_poll").inc()
            except Exception:  # a bug must not silently end the fallback for good
                metrics.BACKEND_ERRORS.labels("any", "invalidation_bug").inc()
                log.exception("invalidation.poll_crashed")
            await asyncio.sleep(self._interval)
