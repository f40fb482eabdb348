"""`BrokerClient`: the blocking client, safe to share between threads."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Self

import httpx

from hubspot_token_broker_client._base import BaseClient, ClientState
from hubspot_token_broker_client._cache import CacheKey, Entry
from hubspot_token_broker_client._errors import BrokerClientError, error_from_transport
from hubspot_token_broker_client._retry import RetryPolicy
from hubspot_token_broker_client._token import AccessToken, Credentials


class _Flight:
    """One request to the broker that several threads wait for.

    The leader finishes it with an entry or an error; every follower gets the same. When
    the leader is interrupted by something that is not an ``Exception`` (KeyboardInterrupt,
    SystemExit), the flight is abandoned and each follower asks for itself."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._entry: Entry | None = None
        self._error: Exception | None = None

    def finish(self, entry: Entry | None, error: Exception | None = None) -> None:
        self._entry, self._error = entry, error
        self._done.set()

    def wait(self) -> Entry | None:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._entry


class BrokerClient(BaseClient):
    """Gets HubSpot access tokens from the broker and caches them in memory.

    ``credentials`` is the caller key, or a callable returning it (called before every
    request to the broker). ``app`` is the app used when a call names none (None: the
    broker's default app). ``transport`` is handed to ``httpx.Client`` as is.

    A token is served from the cache while it has ``min_ttl`` seconds left (the call's, else
    ``default_min_ttl``); otherwise the broker is asked, and concurrent calls for the same
    portal share that one request. After :meth:`close` every call raises ``RuntimeError``.
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            credentials,
            app=app,
            default_min_ttl=default_min_ttl,
            retry=retry or RetryPolicy(),
        )
        self._http = httpx.Client(
            base_url=self._base_url, timeout=timeout, transport=transport, follow_redirects=False
        )
        self._flights: dict[CacheKey, _Flight] = {}
        self._flights_lock = threading.Lock()

    def token(
        self,
        hub_id: int,
        *,
        app: str | None = None,
        user_id: int | None = None,
        min_ttl: int | None = None,
        clamp: bool = False,
    ) -> AccessToken:
        """A token for ``hub_id`` valid for at least ``min_ttl`` seconds.

        Raises a :class:`BrokerClientError` subclass when the broker says no. While HubSpot
        is failing the broker may serve a still-valid token with less than ``min_ttl`` left;
        it is returned as is (check :meth:`AccessToken.remaining` if that matters).

        A ``min_ttl`` above the broker's cap (``BROKER_MIN_TTL_MAX``) raises
        :class:`InvalidRequest`; with ``clamp=True`` it is lowered to the cap instead (see
        :attr:`min_ttl_max`), as the default ``min_ttl`` always is."""
        key, requested, clamp = self._prepare(hub_id, app, user_id, min_ttl, clamp)
        while True:
            min_ttl = self._capped(requested, clamp)
            cached = self._cache.get(key, min_ttl)
            if cached is not None:
                return cached.token
            with self._flights_lock:
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = _Flight()
            if leader:
                return self._lead(key, min_ttl, clamp, flight).token
            entry = flight.wait()
            if entry is not None and entry.satisfies(min_ttl):
                return entry.token
            # The shared request asked for less than we need (or was abandoned): go again.

    def _lead(self, key: CacheKey, min_ttl: int, clamp: bool, flight: _Flight) -> Entry:
        entry: Entry | None = None
        error: Exception | None = None
        try:
            entry = self._fetch(key, min_ttl, clamp)
            return entry
        except Exception as exc:
            error = exc
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]
            flight.finish(entry, error)

    def _fetch(self, key: CacheKey, min_ttl: int, clamp: bool) -> Entry:
        """Ask the broker, retrying per the policy."""
        waited = 0.0
        attempt = 0
        while True:
            self._check_usable()
            path, params, headers = self._request_parts(key, min_ttl)
            sent = self._clocks()
            try:
                response = self._http.get(path, params=params, headers=headers)
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
            time.sleep(delay)
            waited += delay
            attempt += 1

    def close(self) -> None:
        """Close the connection pool and forget every cached token. Idempotent."""
        self._state = ClientState.CLOSED
        self._cache.clear()
        self._http.close()

    def __enter__(self) -> Self:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()
