"""The app catalog: the apps the broker knows (one per HubSpot OAuth app), read through a
short cache for the paths that need one on every refresh, and read fresh where a retirement
must be seen at once (installs and install links)."""

from __future__ import annotations

import time

from broker.core.models import App
from broker.core.ports import AppRepository
from broker.errors import AppKindMismatch, AppRetired, NotFound

#: How long an app read for refreshing and revoking is reused (its settings rarely change).
CACHE_SECONDS = 30.0


class AppCatalog:
    def __init__(self, apps: AppRepository) -> None:
        self._apps = apps
        self._cache: dict[str, tuple[float, App]] = {}

    async def get(self, slug: str, *, installable: bool = False) -> App:
        """The app (cached :data:`CACHE_SECONDS`). ``installable``: read now, and refused
        with :class:`AppRetired` when the app is retired, :class:`AppKindMismatch` when it is
        a private app (installs and install links)."""
        cached = self._cache.get(slug)
        now = time.monotonic()
        if cached is not None and cached[0] > now and not installable:
            return cached[1]
        app = await self._apps.get_app(slug)
        if app is None:
            raise NotFound(f"unknown app {slug!r}", code="app_not_found")
        self._cache[slug] = (now + CACHE_SECONDS, app)
        if installable and app.retired_at is not None:
            raise AppRetired(f"app {slug!r} is retired: it installs no new portal")
        if installable and app.private_hub_id is not None:
            raise AppKindMismatch(f"app {slug!r} is a private app: it has no install flow")
        return app

    async def all(self) -> list[App]:
        """Every app, read now."""
        return await self._apps.list_apps()

    async def pause(self, slug: str, seconds: float, reason: str) -> None:
        """Pause the app's proactive refreshes on every replica (its portals are untouched)."""
        await self._apps.pause_app(slug, seconds, reason)
