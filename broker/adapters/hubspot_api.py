"""HubSpot's API host for the gateway (implements ``HubSpotApi``): httpx, streaming both ways.

One client with its own pool (the OAuth client's pool serves refreshes and must not queue
behind slow CRM calls), no redirects followed, no cookie jar kept between requests, bodies
passed through as bytes (``Content-Encoding`` included: nothing is decoded here). The
timeout bounds the wait for HubSpot's headers; a body that then stalls is bounded by httpx's
read timeout (the same number) between chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from broker.adapters import tls
from broker.config import Settings
from broker.core.ports.hubspot_api import RESPONSE_DROPPED, ApiRequest, Headers, without
from broker.errors import GatewayTimeout, GatewayUpstreamError

#: Connections per replica to HubSpot's API host.
_POOL_SIZE = 200


class _Answer:
    """:class:`~broker.core.ports.hubspot_api.ApiResponse` over an httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Headers = without(response.headers.raw, RESPONSE_DROPPED)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException as exc:
            raise GatewayTimeout("HubSpot stopped sending its answer") from exc
        except httpx.HTTPError as exc:
            raise GatewayUpstreamError("HubSpot's answer was cut off") from exc

    async def close(self) -> None:
        await self._response.aclose()


class HubSpotApiClient:
    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self._base = settings.hubspot_api_url.rstrip("/")
        self._timeout = settings.gateway_timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.gateway_timeout, connect=min(5.0, settings.gateway_timeout)
            ),
            limits=httpx.Limits(max_connections=_POOL_SIZE, max_keepalive_connections=_POOL_SIZE),
            transport=transport,
            follow_redirects=False,
            verify=tls.verify(settings.ca_bundle),
        )

    async def send(self, request: ApiRequest, token: str) -> _Answer:
        url = self._base + request.path
        if request.query:
            url += "?" + request.query.decode("latin-1")
        headers = [*request.headers, (b"authorization", b"Bearer " + token.encode())]
        outgoing = self._client.build_request(
            request.method, url, headers=headers, content=request.body
        )
        # httpx keeps cookies a response set in the client's jar: none are wanted here.
        self._client.cookies.clear()
        try:
            response = await asyncio.wait_for(
                self._client.send(outgoing, stream=True), self._timeout
            )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise GatewayTimeout(f"HubSpot did not answer within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise GatewayUpstreamError(
                f"HubSpot could not be reached ({type(exc).__name__})"
            ) from exc
        return _Answer(response)

    async def close(self) -> None:
        await self._client.aclose()
