"""Cache invalidation across replicas: when a portal stops serving tokens (needs_reauth,
revoked, quarantined), every replica must drop its cached access token; when a caller is
created, disabled, re-keyed or otherwise changed, every replica must stop believing what it
cached about that caller (and which key ids it found unknown).

Primary path: a message on Redis pub/sub, which every replica (this one included) turns
into a cache drop at once. Fallback: each replica polls Postgres every
``invalidation_poll_seconds`` for portals that stopped serving and for callers changed
(``callers.updated_at``, kept by a trigger) or deleted since the last poll, so a replica that
missed the message (Redis down, a reconnect) acts within that bound plus one query.

Messages on the one channel: ``str(PortalKey)`` (``app/hub_id[/user/user_id]``, always with
a ``/``) for a portal, ``caller:<id>`` for a caller. A replica of an older version, which
knows only portal messages, logs ``invalidation.bad_message`` for a caller message and
ignores it: it still drops the caller within its ``caller_cache_seconds``.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.caller_cache import CallerCache
from broker.core.models import PortalKey
from broker.core.ports import CallerRepository, Coordinator, PortalRepository
from broker.core.tasks import BackgroundLoop
from broker.core.tokens import TokenService

log = structlog.get_logger(__name__)

_CALLER = "caller:"


class Invalidations:
    def __init__(
        self,
        settings: Settings,
        *,
        coordinator: Coordinator,
        portals: PortalRepository,
        tokens: TokenService,
        callers: CallerRepository,
        caller_cache: CallerCache,
    ) -> None:
        self._coordinator = coordinator
        self._portals = portals
        self._tokens = tokens
        self._callers = callers
        self._caller_cache = caller_cache
        # Where the last pass got to (None: from now on).
        self._since: datetime | None = None
        self._callers_since: datetime | None = None
        self._loop = BackgroundLoop(
            metrics.Background.INVALIDATION, self._poll, interval=settings.invalidation_poll_seconds
        )

    def start(self) -> None:
        self._coordinator.on_invalidation(self._on_message)
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    async def publish(self, key: PortalKey) -> None:
        """Drop ``key`` here at once and tell every other replica."""
        self._tokens.invalidate(key)
        if not await self._coordinator.publish_invalidation(str(key)):
            log.warning("invalidation.publish_failed", portal=str(key))

    async def publish_caller(self, caller_id: int) -> None:
        """Caller ``caller_id`` was created or changed (call after the commit): forget it
        here at once and tell every other replica."""
        self._caller_cache.forget((caller_id,))
        if not await self._coordinator.publish_invalidation(f"{_CALLER}{caller_id}"):
            log.warning("invalidation.publish_failed", caller_id=caller_id)

    def _on_message(self, text: str) -> None:
        try:
            if text.startswith(_CALLER):
                self._caller_cache.forget((int(text.removeprefix(_CALLER)),))
                return
            key = PortalKey.parse(text)
        except ValueError:
            log.warning("invalidation.bad_message")
            return
        self._tokens.invalidate(key)

    async def _poll(self) -> None:
        """One pass of the Postgres fallback: portals that stopped serving, callers changed."""
        stopped = await self._portals.stopped_since(self._since)
        self._since = stopped.until
        for key in stopped.keys:
            self._tokens.invalidate(key)
        changed = await self._callers.changed_since(
            self._callers_since, self._caller_cache.caller_ids()
        )
        self._callers_since = changed.until
        if changed.ids:
            self._caller_cache.forget(changed.ids)
