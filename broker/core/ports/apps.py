"""Apps (one per HubSpot OAuth app) in Postgres."""

from __future__ import annotations

from typing import Protocol

from broker.core.models import App


class AppRepository(Protocol):
    """The apps: their settings, retirement, and pauses of their proactive refreshes."""

    async def get_app(self, slug: str) -> App | None: ...

    async def list_apps(self) -> list[App]: ...

    async def save_app(self, app: App) -> bool:
        """Insert or update the app's settings (never its retirement); True when inserted."""
        ...

    async def retire_app(self, slug: str, *, retired: bool, actor: str) -> App | None:
        """Retire the app (keeping the first retirement's time) or put it back in service;
        None for an unknown app."""
        ...

    async def pause_app(self, slug: str, seconds: float, reason: str) -> None:
        """Pause proactive refreshes of an app's portals; portals themselves are untouched."""
        ...
