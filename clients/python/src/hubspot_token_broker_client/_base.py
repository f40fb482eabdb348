"""What the sync and async clients share: arguments, state, the request, the answer.

Neither this module nor its callers do I/O here; ``_sync`` and ``_async`` send the request
that :meth:`BaseClient._request_parts` describes and hand the answer to
:meth:`BaseClient._accept`.
"""

from __future__ import annotations

import enum
import time
from datetime import UTC, datetime

import httpx

from hubspot_token_broker_client._cache import CacheKey, Entry, TokenCache
from hubspot_token_broker_client._errors import (
    BrokerClientError,
    InvalidRequest,
    error_from_response,
)
from hubspot_token_broker_client._retry import RetryPolicy
from hubspot_token_broker_client._token import (
    AccessToken,
    Credentials,
    parse_token,
    read_credentials,
)

_USER_AGENT = "hubspot-token-broker-client/0.1"


class ClientState(enum.Enum):
    UNOPENED = 1
    """Created; usable with or without a ``with`` block."""
    OPENED = 2
    """Inside its ``with`` block."""
    CLOSED = 3
    """Closed: refuses every call, and cannot be opened again."""


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}")


class BaseClient:
    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        app: str | None,
        default_min_ttl: int,
        retry: RetryPolicy,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an http:// or https:// URL")
        if isinstance(credentials, str) and not credentials.strip():
            raise ValueError("credentials must be a caller key or a callable returning one")
        if not isinstance(credentials, str) and not callable(credentials):
            raise TypeError("credentials must be a caller key or a callable returning one")
        _check_int("default_min_ttl", default_min_ttl, 0)
        self._base_url = url
        self._credentials = credentials
        self._app = app
        self._default_min_ttl = default_min_ttl
        self._retry = retry
        self._cache = TokenCache()
        self._state = ClientState.UNOPENED
        self._min_ttl_max: int | None = None

    def __repr__(self) -> str:
        # The credentials are deliberately left out.
        return f"{type(self).__name__}(base_url={str(self._base_url)!r}, app={self._app!r})"

    @property
    def default_min_ttl(self) -> int:
        return self._default_min_ttl

    @property
    def min_ttl_max(self) -> int | None:
        """The broker's largest allowed ``min_ttl`` (its ``BROKER_MIN_TTL_MAX``), once learned.

        None until the broker refused a ``min_ttl`` as too large: its 422 names the maximum
        (``errors[].maximum``), so learning it costs nothing while no call asks for more."""
        return self._min_ttl_max

    @property
    def is_closed(self) -> bool:
        return self._state is ClientState.CLOSED

    def invalidate(
        self,
        hub_id: int,
        *,
        app: str | None = None,
        user_id: int | None = None,
        token: AccessToken | None = None,
    ) -> None:
        """Forget the cached token of a portal, so the next call asks the broker.

        With ``token``, forget it only if it is still the cached one: a token another caller
        already replaced is kept (this is what :class:`HubSpotAuth` does after a 401)."""
        self._cache.discard(CacheKey(app or self._app, hub_id, user_id), token)

    # --- for the subclasses ---------------------------------------------------------------
    def _open(self) -> None:
        if self._state is ClientState.OPENED:
            raise RuntimeError("Cannot open a client instance more than once.")
        if self._state is ClientState.CLOSED:
            raise RuntimeError("Cannot reopen a client instance, once it has been closed.")
        self._state = ClientState.OPENED

    def _check_usable(self) -> None:
        if self._state is ClientState.CLOSED:
            raise RuntimeError("Cannot get a token, as the client has been closed.")

    def _prepare(
        self,
        hub_id: int,
        app: str | None,
        user_id: int | None,
        min_ttl: int | None,
        clamp: bool,
    ) -> tuple[CacheKey, int, bool]:
        """Validate a ``token()`` call: its cache key, the ``min_ttl`` it asks for, and
        whether that may be lowered to the broker's cap (always for the default)."""
        self._check_usable()
        # hub_id goes into the URL path: only a positive int may get there.
        _check_int("hub_id", hub_id, 1)
        if user_id is not None:
            _check_int("user_id", user_id, 1)
        if min_ttl is None:
            min_ttl, clamp = self._default_min_ttl, True
        _check_int("min_ttl", min_ttl, 0)
        return CacheKey(app or self._app, hub_id, user_id), min_ttl, clamp

    def _capped(self, min_ttl: int, clamp: bool) -> int:
        """``min_ttl``, lowered to the broker's cap when the call allows it and it is known."""
        if clamp and self._min_ttl_max is not None:
            return min(min_ttl, self._min_ttl_max)
        return min_ttl

    def _lowered(self, error: BrokerClientError, min_ttl: int, clamp: bool) -> int | None:
        """After ``error``, the smaller ``min_ttl`` to ask again with at once: when the
        broker refused ``min_ttl`` as above its cap and the call allows clamping. The cap is
        learned either way."""
        if not isinstance(error, InvalidRequest) or error.min_ttl_max is None:
            return None
        self._min_ttl_max = error.min_ttl_max
        return error.min_ttl_max if clamp and min_ttl > error.min_ttl_max else None

    def _request_parts(
        self, key: CacheKey, min_ttl: int
    ) -> tuple[str, dict[str, str | int], dict[str, str]]:
        """(path, query, headers) of the request; the caller key is read now, every time."""
        params: dict[str, str | int] = {"min_ttl": min_ttl}
        if key.app is not None:
            params["app"] = key.app
        if key.user_id is not None:
            params["user_id"] = key.user_id
        headers = {
            "Authorization": f"Bearer {read_credentials(self._credentials)}",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        return f"/v1/portals/{key.hub_id}/token", params, headers

    @staticmethod
    def _clocks() -> tuple[datetime, float]:
        """(wall, monotonic) now: taken just before a request is sent."""
        return datetime.now(UTC), time.monotonic()

    def _accept(
        self, key: CacheKey, response: httpx.Response, sent: tuple[datetime, float]
    ) -> Entry:
        """Cache and return the token in a 200 answer; raise the typed error otherwise."""
        if response.status_code != 200:
            raise error_from_response(response)
        token, expires_in = parse_token(response, sent[0])
        if token.hub_id != key.hub_id:
            # Never cache (or hand out) one portal's token under another portal's key.
            raise BrokerClientError(
                "the broker's answer is for another portal",
                status=response.status_code,
                code="invalid_response",
                request_id=response.headers.get("x-request-id"),
            )
        entry = Entry(token, sent[1] + expires_in)
        self._cache.put(key, entry)
        return entry
