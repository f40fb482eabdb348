"""HubSpot's API host for the gateway (implements ``HubSpotApi``), streaming both ways: the
lean HTTP/1.1 client (:mod:`broker.adapters.http1_stream`) for a request whose body is held
whole (most: it cost less than half of httpx's CPU per request), httpx for a request body
that streams and behind an egress proxy.

One client with its own pool (the OAuth client's pool serves refreshes and must not queue
behind slow CRM calls), no redirects followed, no cookie jar kept between requests, bodies
passed through as bytes (``Content-Encoding`` included: nothing is decoded here). The
timeout bounds the wait for HubSpot's headers; a body that then stalls is bounded by httpx's
read timeout (the same number) between chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import httpx
import structlog

from broker.adapters import tls
from broker.adapters.http1 import BadAnswer
from broker.adapters.http1_stream import Streamed, StreamPool
from broker.adapters.hubspot_http import proxied
from broker.config import Settings
from broker.core.ports.hubspot_api import RESPONSE_DROPPED, ApiRequest, Headers, without
from broker.errors import GatewayTimeout, GatewayUpstreamError

log = structlog.get_logger(__name__)

#: Connections per replica to HubSpot's API host, in pools of :data:`_PER_CLIENT`: httpcore
#: walks every pooled connection on each request (a poll(2) per idle one), so one pool of
#: 200 cost more CPU than the rest of a gateway request (py-spy: 57 % of the broker's
#: samples at 50 connections, 92 req/s); several small ones keep the walk short.
_POOL_SIZE = 256
_PER_CLIENT = 8
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: What a path keeps as it is (RFC 3986 pchar and "/"); everything else is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
#: The connection failed with no answer (e.g. the server closed an idle keep-alive one).
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Answer:
    """:class:`~broker.core.ports.hubspot_api.ApiResponse` over an httpx response."""

    def __init__(self, response: httpx.Response, release: Callable[[], None]) -> None:
        self._response = response
        self._release = release
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
        try:
            await self._response.aclose()
        finally:
            self._release()
            self._release = _nothing


def _nothing() -> None:
    pass


class _LeanAnswer:
    """:class:`~broker.core.ports.hubspot_api.ApiResponse` over the lean client's answer."""

    def __init__(self, answer: Streamed, timeout: float) -> None:
        self._answer = answer
        self._timeout = timeout
        self.status = answer.status
        self.headers: Headers = without(answer.headers, RESPONSE_DROPPED)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._answer.chunks(self._timeout):
                yield chunk
        except TimeoutError as exc:
            raise GatewayTimeout("HubSpot stopped sending its answer") from exc
        except (OSError, BadAnswer) as exc:
            raise GatewayUpstreamError("HubSpot's answer was cut off") from exc

    async def close(self) -> None:
        self._answer.close()


class HubSpotApiClient:
    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self._base = settings.hubspot_api_url.rstrip("/")
        self._timeout = settings.gateway_timeout
        verify = tls.verify(settings.ca_bundle)
        timeout = httpx.Timeout(
            settings.gateway_timeout, connect=min(5.0, settings.gateway_timeout)
        )
        limits = httpx.Limits(max_connections=_PER_CLIENT, max_keepalive_connections=_PER_CLIENT)
        self._clients = [
            httpx.AsyncClient(
                timeout=timeout,
                limits=limits,
                transport=transport,
                follow_redirects=False,
                verify=verify,
            )
            for _ in range(_POOL_SIZE // _PER_CLIENT)
        ]
        self._busy = [0] * len(self._clients)
        self._lean: StreamPool | None = None
        if transport is None and not proxied(self._base):
            self._lean = StreamPool(
                timeout=settings.gateway_timeout,
                connect_timeout=min(5.0, settings.gateway_timeout),
                tls=tls.context(settings.ca_bundle),
                keep=_POOL_SIZE,
                limit=_POOL_SIZE,
                # HubSpot's edge closes idle connections after a few seconds.
                keepalive_expiry=4.0,
            )

    async def _send_lean(
        self, lean: StreamPool, request: ApiRequest, body: bytes, token: str
    ) -> _LeanAnswer:
        target = _target(request)
        headers = [(k, v) for k, v in request.headers if k.lower() != b"content-length"]
        headers.append((b"authorization", b"Bearer " + token.encode()))
        try:
            answer = await lean.open(
                self._base,
                request.method,
                target,
                headers,
                body,
                resend_stale=request.method in _IDEMPOTENT,
            )
        except TimeoutError as exc:
            raise GatewayTimeout(f"HubSpot did not answer within {self._timeout:g} s") from exc
        except (OSError, BadAnswer) as exc:  # CannotConnect included
            raise GatewayUpstreamError(
                f"HubSpot could not be reached ({type(exc).__name__})"
            ) from exc
        return _LeanAnswer(answer, self._timeout)

    async def send(self, request: ApiRequest, token: str) -> _Answer | _LeanAnswer:
        if self._lean is not None and isinstance(request.body, bytes):
            return await self._send_lean(self._lean, request, request.body, token)
        url = self._base + _target(request)
        headers = [*request.headers, (b"authorization", b"Bearer " + token.encode())]
        index = self._busy.index(min(self._busy))  # the least busy pool
        client = self._clients[index]
        outgoing = client.build_request(request.method, url, headers=headers, content=request.body)
        # httpx keeps cookies a response set in the client's jar: none are wanted here.
        client.cookies.clear()
        self._busy[index] += 1

        def release() -> None:
            self._busy[index] -= 1

        try:
            try:
                response = await asyncio.wait_for(client.send(outgoing, stream=True), self._timeout)
            except _STALE as exc:
                # A keep-alive connection HubSpot closed as the request went out (no answer
                # at all): an idempotent request with its body at hand goes once more.
                if request.method not in _IDEMPOTENT or not request.replayable:
                    raise
                log.info("gateway.resent", error=type(exc).__name__)
                outgoing = client.build_request(
                    request.method, url, headers=headers, content=request.body
                )
                response = await asyncio.wait_for(client.send(outgoing, stream=True), self._timeout)
        except (TimeoutError, httpx.TimeoutException) as exc:
            release()
            raise GatewayTimeout(f"HubSpot did not answer within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            release()
            raise GatewayUpstreamError(
                f"HubSpot could not be reached ({type(exc).__name__})"
            ) from exc
        except BaseException:
            release()
            raise
        return _Answer(response, release)

    async def close(self) -> None:
        if self._lean is not None:
            self._lean.close()
        for client in self._clients:
            await client.aclose()


def _target(request: ApiRequest) -> str:
    """The request target sent to HubSpot: the (decoded) path percent-encoded again, so a
    space, a control character, ``?`` or ``#`` in it stays part of the path (it cannot end
    the request line or start a query), then the query as the caller sent it."""
    target = quote(request.path, safe=_PATH_SAFE)
    if request.query:
        target += "?" + request.query.decode("latin-1")
    return target
