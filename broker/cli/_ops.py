"""What the commands need, as one interface with two implementations:

* :class:`~broker.cli._local.LocalOperations` calls the use cases directly (``open_admin``:
  PostgreSQL, Redis and Vault credentials in this process). For bootstrap (the first
  ``callers:admin``) and break-glass; audited as ``cli:<login>``.
* :class:`~broker.cli._remote.RemoteOperations` calls the management API of a running broker
  (``--url``/``BROKER_URL``) with a caller key or a workload JWT: no database or Vault
  credentials here; audited as that caller.

Both return the management API's JSON views (``openapi.yaml``), so every command prints the
same thing whichever way it ran, and both raise :class:`~broker.errors.BrokerError` with the
same codes (a remote problem+json becomes one).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

View = dict[str, Any]
Progress = Callable[[View], None]


class Operations(Protocol):
    # --- apps (apps:admin) ----------------------------------------------------------------
    async def apps_list(self) -> list[View]: ...

    async def app_put(self, slug: str, spec: View, client_secret: str | None) -> View:
        """``spec``: the PUT body's fields but the secret."""
        ...

    async def app_retire(self, slug: str, *, retired: bool) -> View: ...

    async def private_app(self, action: str, slug: str, hub_id: int, body: View) -> View:
        """``action``: add, rotate or remove a private app's token; ``body`` as the API's
        (``access_token``, ``scopes``, ``old_expires_in``); the portal's view."""
        ...

    # --- callers (callers:admin) ----------------------------------------------------------
    async def callers_create(self, spec: View) -> View:
        """``spec`` as the POST body; the answer carries ``key`` (None without one)."""
        ...

    async def callers_list(self) -> list[View]: ...

    async def caller_rotate(self, name: str, *, overlap_seconds: float) -> View: ...

    async def caller_disable(self, name: str) -> View: ...

    async def caller_gateway(self, name: str, *, hubspot_paths: list[str], weight: int) -> View:
        """What ``name`` may call through the HubSpot gateway, and its queue weight."""
        ...

    # --- portals and install links (portals:admin) ----------------------------------------
    async def portals_list(
        self, *, app: str | None, state: str | None, limit: int
    ) -> list[View]: ...

    async def portal(
        self, action: str, app: str | None, hub_id: int, user_id: int | None, body: View | None
    ) -> View:
        """``action``: show, revoke, quarantine, release, refresh or install-link; ``app``
        None: the broker's default app."""
        ...

    async def app_install_link(
        self, slug: str, *, ttl: int | None, return_to: str | None
    ) -> View: ...

    async def links_list(self, *, app: str | None, include_inactive: bool) -> list[View]: ...

    async def link_revoke(self, link_id: str) -> View: ...

    # --- audit and webhooks (portals:admin) -----------------------------------------------
    async def audit(self, query: View) -> View:
        """``query``: the API's query parameters; ``{"events", "next_cursor"}``."""
        ...

    async def webhook_events(self, query: View) -> View: ...

    async def redeliver(self, event_id: int, endpoint: str | None) -> View: ...

    # --- keys and retention (apps:admin, unlimited) ---------------------------------------
    async def transit_status(self) -> View: ...

    async def transit_rewrap(
        self, *, batch: int, limit: int | None, retire: bool, progress: Progress
    ) -> View: ...

    async def signing_status(self) -> list[View]: ...

    async def signing_rotate(
        self, purposes: list[str], *, overlap_seconds: float
    ) -> list[View]: ...

    async def retention_sweep(self) -> View: ...


Opener = Callable[[], AbstractAsyncContextManager[Operations]]
