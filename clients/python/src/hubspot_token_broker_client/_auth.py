"""`HubSpotAuth`: an ``httpx.Auth`` that signs HubSpot API calls with a broker token."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Generator

import httpx

from hubspot_token_broker_client._async import AsyncBrokerClient
from hubspot_token_broker_client._sync import BrokerClient
from hubspot_token_broker_client._token import AccessToken

#: After a 401 the token is asked for again with this much more life than the rejected one
#: had left, so neither this client's cache nor the broker's can hand back the same token.
_RENEW_MARGIN = 60


def renewal_min_ttl(rejected: AccessToken, min_ttl: int) -> int:
    """The ``min_ttl`` that makes the broker return a token other than ``rejected``.

    It is asked for with ``clamp=True``: lowered to the broker's cap, which it learns from
    the broker (``BROKER_MIN_TTL_MAX``). A token with more than the cap left (a few minutes
    old) cannot be forced out, and comes back again."""
    wanted = math.ceil(max(0.0, rejected.remaining())) + _RENEW_MARGIN
    return max(min_ttl, wanted)


class HubSpotAuth(httpx.Auth):
    """Sets ``Authorization: Bearer <token>`` on each request from the broker client's cache.

    Use with an ``httpx.Client`` when built on a :class:`BrokerClient`, and with an
    ``httpx.AsyncClient`` when built on an :class:`AsyncBrokerClient` (the other pairing
    raises ``TypeError``: a blocking call must not run on an event loop).

    When HubSpot answers 401 the token is dead before its time (the app was uninstalled,
    the portal reinstalled, a clock is off). The auth then drops it from the cache, asks the
    broker for a token outliving the rejected one (which makes the broker re-read or
    refresh), and sends the request once more. If the broker can only return the same token
    the 401 is returned as is; if the broker finds the grant dead, its error
    (:class:`NeedsReauth`, ...) is raised from the request.

    Request bodies must be replayable for that retry (httpx reads them into memory).
    """

    requires_request_body = True

    def __init__(
        self,
        client: BrokerClient | AsyncBrokerClient,
        hub_id: int,
        *,
        app: str | None = None,
        user_id: int | None = None,
        min_ttl: int | None = None,
    ) -> None:
        self._client = client
        self._hub_id = hub_id
        self._app = app
        self._user_id = user_id
        self._min_ttl = min_ttl

    def __repr__(self) -> str:
        return f"HubSpotAuth(hub_id={self._hub_id!r}, app={self._app!r})"

    def _renew_ttl(self, rejected: AccessToken) -> int:
        base = self._min_ttl if self._min_ttl is not None else self._client.default_min_ttl
        return renewal_min_ttl(rejected, base)

    @staticmethod
    def _sign(request: httpx.Request, token: AccessToken) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        return request

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        client = self._client
        if not isinstance(client, BrokerClient):
            raise TypeError("HubSpotAuth on an AsyncBrokerClient needs an httpx.AsyncClient")
        app, user_id = self._app, self._user_id
        token = client.token(self._hub_id, app=app, user_id=user_id, min_ttl=self._min_ttl)
        response = yield self._sign(request, token)
        if response.status_code != 401:
            return
        client.invalidate(self._hub_id, app=app, user_id=user_id, token=token)
        renew_ttl = self._renew_ttl(token)
        fresh = client.token(self._hub_id, app=app, user_id=user_id, min_ttl=renew_ttl, clamp=True)
        if fresh.access_token != token.access_token:
            yield self._sign(request, fresh)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        client = self._client
        if not isinstance(client, AsyncBrokerClient):
            raise TypeError("HubSpotAuth on a BrokerClient needs an httpx.Client")
        app, user_id = self._app, self._user_id
        token = await client.token(self._hub_id, app=app, user_id=user_id, min_ttl=self._min_ttl)
        response = yield self._sign(request, token)
        if response.status_code != 401:
            return
        client.invalidate(self._hub_id, app=app, user_id=user_id, token=token)
        renew_ttl = self._renew_ttl(token)
        fresh = await client.token(
            self._hub_id, app=app, user_id=user_id, min_ttl=renew_ttl, clamp=True
        )
        if fresh.access_token != token.access_token:
            yield self._sign(request, fresh)
