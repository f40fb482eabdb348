"""`AsyncBrokerClient`: the asyncio client. Use one instance per event loop."""

from __future__ import annotations

import asyncio
import functools
from types import TracebackType
from typing import Self

import httpx

from hubspot_token_broker_client._base import BaseClient, ClientState
from hubspot_token_broker_client._cache import CacheKey, Entry
from hubspot_token_broker_client._errors import BrokerClientError, error_from_transport
from hubspot_token_broker_client._retry import RetryPolicy
from hubspot_token_broker_client._token import AccessToken, Credentials


class AsyncBrokerClient(BaseClient):
    """The asyncio twin of :class:`BrokerClient` (same arguments, same cache rules).

    Concurrent calls for the same portal await one task; a caller that is cancelled does
    not cancel the request the others wait for. :meth:`aclose` cancels requests in flight.
    """

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        app: str | None = None,
        default_min_ttl: int = 300,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            credentials,
            app=app,
            default_min_ttl=default_min_ttl,
            retry=retry or RetryPolicy(),
        )
        self._http = httpx.AsyncClient(
            base_url=self._base_url, timeout=timeout, transport=transport, follow_redirects=False
        )
        self._flights: dict[CacheKey, asyncio.Task[Entry]] = {}

    async def token(
        self,
        hub_id: int,
        *,
        app: str | None = None,
        user_id: int | None = None,
        min_ttl: int | None = None,
        clamp: bool = False,
    ) -> AccessToken:
        """A token for ``hub_id`` valid for at least ``min_ttl`` seconds (see
        :meth:`BrokerClient.token`)."""
        key, requested, clamp = self._prepare(hub_id, app, user_id, min_ttl, clamp)
        while True:
            min_ttl = self._capped(requested, clamp)
            cached = self._cache.get(key, min_ttl)
            if cached is not None:
                return cached.token
            task = self._flights.get(key)
            leader = task is None or task.done()
            if task is None or task.done():
                fetch = self._fetch(key, min_ttl, clamp)
                task = asyncio.create_task(fetch, name=f"broker-token {key}")
                self._flights[key] = task
                task.add_done_callback(functools.partial(self._forget, key))
            entry = await asyncio.shield(task)
            if leader or entry.satisfies(min_ttl):
                return entry.token
            # The shared request asked for less than we need: go again.

    def _forget(self, key: CacheKey, task: asyncio.Task[Entry]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            # Mark the outcome as seen: when every waiter was cancelled, nobody else will,
            # and asyncio would log "exception was never retrieved".
            task.exception()

    async def _fetch(self, key: CacheKey, min_ttl: int, clamp: bool) -> Entry:
        """Ask the broker, retrying per the policy."""
        waited = 0.0
        attempt = 0
        while True:
            self._check_usable()
            path, params, headers = self._request_parts(key, min_ttl)
            sent = self._clocks()
            try:
                response = await self._http.get(path, params=params, headers=headers)
            except httpx.TransportError as exc:
                error: BrokerClientError = error_from_transport(exc)
            else:
                try:
                    return self._accept(key, response, sent)
                except BrokerClientError as exc:
                    error = exc
            lowered = self._lowered(error, min_ttl, clamp)
            if lowered is not None:
                min_ttl = lowered  # not a retry: a different request, sent at once
                continue
            delay = self._retry.delay(attempt, error, waited)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            waited += delay
            attempt += 1

    async def aclose(self) -> None:
        """Cancel requests in flight, close the connection pool and forget every cached
        token. Idempotent."""
        self._state = ClientState.CLOSED
        self._cache.clear()
        flights = list(self._flights.values())
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
