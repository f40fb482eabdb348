"""HubSpot through the broker's gateway: the portal's token never reaches this service.

    with BrokerClient("http://broker:8080", caller_key, app="my-app") as broker:
        with gateway_client(broker, 12345678) as hubspot:
            hubspot.get("/crm/v3/objects/contacts", params={"limit": 10})

Requests go to ``/v1/portals/{hub_id}/hubspot/...`` with the caller's own credentials; the
broker adds the portal's token, waits for the portal's shared HubSpot budget and answers
HubSpot's status and body. A 429 with the problem code ``portal_budget_exhausted`` is the
broker's (nothing was sent to HubSpot; ``Retry-After`` says when to try again); other
statuses and bodies are HubSpot's. The caller needs a ``hubspot_paths`` grant covering the
paths it calls (``broker callers gateway NAME --path /crm/``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx

from hubspot_token_broker_client._base import BaseClient
from hubspot_token_broker_client._token import read_credentials


class CallerAuth(httpx.Auth):
    """``Authorization: Bearer <caller key>`` from the broker client's credentials (read for
    every request, so a callable's rotated key is used at once)."""

    def __init__(self, client: BaseClient) -> None:
        self._client = client

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {read_credentials(self._client._credentials)}"
        yield request


def gateway_url(client: BaseClient, hub_id: int) -> str:
    """The base URL HubSpot API paths are appended to for ``hub_id`` (no trailing slash)."""
    if isinstance(hub_id, bool) or not isinstance(hub_id, int) or hub_id < 1:
        raise ValueError("hub_id must be a positive int")
    return f"{str(client._base_url).rstrip('/')}/v1/portals/{hub_id}/hubspot"


def _bound(client: BaseClient, hub_id: int, app: str | None, user_id: int | None) -> dict[str, Any]:
    """What both gateway clients are built with besides the caller's options."""
    return {
        "base_url": gateway_url(client, hub_id),
        "auth": CallerAuth(client),
        "params": _params(client, app, user_id),
        "follow_redirects": False,
    }


def _params(client: BaseClient, app: str | None, user_id: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if app or client._app:
        params["app"] = app or client._app
    if user_id is not None:
        params["user_id"] = user_id
    return params


def gateway_client(
    client: BaseClient,
    hub_id: int,
    *,
    app: str | None = None,
    user_id: int | None = None,
    **options: Any,
) -> httpx.Client:
    """An ``httpx.Client`` calling HubSpot's API for ``hub_id`` through the gateway (paths
    relative to HubSpot's host, e.g. ``/crm/v3/objects/contacts``). ``options`` go to
    ``httpx.Client`` (``timeout``, ``transport``, ...)."""
    options.setdefault("timeout", 60.0)
    return httpx.Client(**_bound(client, hub_id, app, user_id), **options)


def async_gateway_client(
    client: BaseClient,
    hub_id: int,
    *,
    app: str | None = None,
    user_id: int | None = None,
    **options: Any,
) -> httpx.AsyncClient:
    """:func:`gateway_client` for asyncio."""
    options.setdefault("timeout", 60.0)
    return httpx.AsyncClient(**_bound(client, hub_id, app, user_id), **options)
