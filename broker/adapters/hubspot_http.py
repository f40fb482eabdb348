"""How the HubSpot adapter reaches HubSpot: the lean HTTP/1.1 client shared with Vault
(:mod:`broker.adapters.http1`), or httpx when an egress proxy applies.

The token endpoint is the one request a refresh makes to HubSpot, hundreds per second on a
busy refresher: a small form POST, a JSON answer. httpx cost about a third of a refresh's CPU
for it, the lean client a fraction of that. httpx stays for two cases the lean client does not
handle: an ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` that applies to HubSpot's host
(``NO_PROXY`` honoured, as httpx does), and a test's own ``httpx`` transport.

Either way the adapter sees one answer type (:class:`Reply`) and two failures:
:class:`NotSent` (no connection: the request never left, safe to send again) and
:class:`NoAnswer` (it may have reached HubSpot: outcome unknown).
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

import httpx

from broker.adapters import tls
from broker.adapters.http1 import BadAnswer, CannotConnect, Http1Pool
from broker.config import Settings

logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

_FORM = "application/x-www-form-urlencoded"
_AGENT = "hubspot-token-broker"
#: Connections per httpx client. httpcore walks every pooled connection on each request (a
#: poll(2) per idle one, to see whether the server closed it), so the refresher's many
#: concurrent calls go through several small pools, not one big one.
_POOL_SIZE = 8


class NotSent(Exception):
    """No connection to HubSpot: the request never left."""


class NoAnswer(Exception):
    """The request may have reached HubSpot, but no complete answer came back."""


class Reply(NamedTuple):
    status_code: int
    body: bytes
    retry_after: str | None

    def json(self) -> Any:
        """The body's JSON; ValueError when it is not JSON (or not UTF-8)."""
        return json.loads(self.body)


def proxied(url: str) -> bool:
    """Whether the environment's proxy settings send requests to ``url`` through a proxy."""
    target = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(target.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(target.netloc)  # NO_PROXY, from the environment


class HubSpotHttp:
    """``await send(method, path, form)`` -> :class:`Reply` from ``BROKER_HUBSPOT_API_URL``."""

    def __init__(
        self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._api = settings.hubspot_api_url.rstrip("/")
        # The real bound is the caller's pause-tolerant watchdog: these are backstops.
        backstop, connect = settings.hubspot_timeout * 4, min(3.0, settings.hubspot_timeout)
        # The refresher may have refresher_concurrency calls out at once, callers' own more.
        connections = max(64, settings.refresher_concurrency + 32)
        self.uses_httpx = transport is not None or proxied(self._api)
        self._lean: Http1Pool | None = None
        self._pools: _Pools | None = None
        if not self.uses_httpx:
            self._lean = Http1Pool(
                timeout=backstop,
                connect_timeout=connect,
                tls=tls.context(settings.ca_bundle),
                keep=connections,
                limit=connections,  # as many as the httpx clients had between them
                # HubSpot's edge closes idle connections after a few seconds: stop reusing
                # one before it does (httpx kept them 5 s).
                keepalive_expiry=4.0,
                resend_stale=False,  # a refresh must never go out twice unknowingly
                keep_headers=("retry-after",),
            )
            return
        verify = tls.verify(settings.ca_bundle)

        def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self._api,
                timeout=httpx.Timeout(backstop, connect=connect),
                # Every connection is kept alive for reuse: closing one after a burst costs
                # a TCP (and TLS) handshake on the next refresh.
                limits=httpx.Limits(
                    max_connections=_POOL_SIZE, max_keepalive_connections=_POOL_SIZE
                ),
                transport=transport,
                headers={"User-Agent": _AGENT},
                follow_redirects=False,
                verify=verify,
            )

        self._pools = _Pools(make, connections)

    async def send(self, method: str, path: str, form: dict[str, str] | None = None) -> Reply:
        if self._lean is not None:
            # identity: the lean client does not decompress (httpx did, and asked for it)
            headers = {"User-Agent": _AGENT, "Accept-Encoding": "identity"}
            body = None
            if form is not None:
                headers["Content-Type"] = _FORM
                body = urlencode(form).encode()
            try:
                answer = await self._lean.request(self._api, method, path, headers, body)
            except CannotConnect as exc:
                raise NotSent(str(exc)) from exc
            except (OSError, BadAnswer) as exc:  # not TimeoutError: the caller's to see
                if isinstance(exc, TimeoutError):
                    raise
                raise NoAnswer(type(exc).__name__) from exc
            return Reply(answer.status, answer.body, answer.headers.get("retry-after"))
        assert self._pools is not None
        try:
            with self._pools.client() as client:
                response = await client.request(method, path, data=form)
        except httpx.ConnectError as exc:
            raise NotSent(type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise NoAnswer(type(exc).__name__) from exc
        return Reply(response.status_code, response.content, response.headers.get("Retry-After"))

    async def close(self) -> None:
        if self._lean is not None:
            self._lean.close()
        if self._pools is not None:
            await self._pools.aclose()


class _Pools:
    """Keep-alive httpx clients; each call takes the least busy one."""

    def __init__(self, make: Callable[[], httpx.AsyncClient], connections: int) -> None:
        self._clients = [make() for _ in range(max(1, -(-connections // _POOL_SIZE)))]
        self._busy = [0] * len(self._clients)

    @contextlib.contextmanager
    def client(self) -> Iterator[httpx.AsyncClient]:
        busy = self._busy
        index = busy.index(min(busy))
        busy[index] += 1
        try:
            yield self._clients[index]
        finally:
            busy[index] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
