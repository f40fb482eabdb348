"""`AccessToken`, what a successful answer becomes, and how the caller key is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeAlias, TypeGuard

import httpx

from broker.client._errors import BrokerClientError, Unauthorized

#: The caller key (``hsb_...``), or a callable returning it, called before every request to
#: the broker so a rotated key or a re-projected service-account token file is picked up.
Credentials: TypeAlias = str | Callable[[], str]


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A HubSpot access token for one portal. ``repr`` (and so ``str``) hides the token.

    ``expires_at`` is on this machine's clock, measured from the moment the request to the
    broker was sent plus the ``expires_in`` it answered: never later than the real expiry.
    """

    access_token: str = field(repr=False)
    expires_at: datetime
    hub_id: int
    app: str
    scopes: tuple[str, ...]
    user_id: int | None = None
    #: The broker could not satisfy the ``min_ttl`` asked for (refreshing failed) and served
    #: a token that is still valid instead of an error.
    degraded: bool = False

    def remaining(self) -> float:
        """Seconds this token stays valid, by this machine's wall clock (negative: expired)."""
        return (self.expires_at - datetime.now(UTC)).total_seconds()


def read_credentials(credentials: Credentials) -> str:
    """The caller key to send now; surrounding whitespace (a file's newline) is dropped."""
    key = credentials() if callable(credentials) else credentials
    if not isinstance(key, str) or not key.strip():
        # Never show the value: it may be a half-written key.
        raise Unauthorized("the credentials gave no caller key", code="no_credentials")
    return key.strip()


def _invalid(detail: str, response: httpx.Response) -> BrokerClientError:
    return BrokerClientError(
        f"the broker's answer is not a token: {detail}",
        status=response.status_code,
        code="invalid_response",
        request_id=response.headers.get("x-request-id"),
    )


def _count(value: object) -> TypeGuard[int]:
    """An int >= 0 that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_token(response: httpx.Response, sent_at: datetime) -> tuple[AccessToken, int]:
    """The token in a 200 answer and its ``expires_in``; ``sent_at`` is when the request left.

    Only field names are ever put in the error raised for a malformed body, never values.
    """
    try:
        body = response.json()
    except ValueError:
        raise _invalid("not JSON", response) from None
    if not isinstance(body, dict):
        raise _invalid("not a JSON object", response)
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise _invalid("access_token is missing", response)
    expires_in = body.get("expires_in")
    if not _count(expires_in):
        raise _invalid("expires_in is not a non-negative integer", response)
    hub_id = body.get("hub_id")
    if not _count(hub_id):
        raise _invalid("hub_id is not an integer", response)
    app = body.get("app")
    if not isinstance(app, str):
        raise _invalid("app is not a string", response)
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise _invalid("scopes is not a list of strings", response)
    user_id = body.get("user_id")
    if user_id is not None and not _count(user_id):
        raise _invalid("user_id is not an integer", response)
    token = AccessToken(
        access_token=access_token,
        expires_at=sent_at + timedelta(seconds=expires_in),
        hub_id=hub_id,
        app=app,
        scopes=tuple(scopes),
        user_id=user_id,
        degraded=body.get("degraded") is True,
    )
    return token, expires_in
