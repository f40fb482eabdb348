"""`AccessToken`, what a successful answer becomes, and how the caller key is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import httpx

from hubspot_token_broker_client._errors import BrokerClientError, Unauthorized

#: The caller key (``hsb_...``), or a callable returning it, called before every request to
#: the broker so a rotated key or a re-projected service-account token file is picked up.
Credentials: TypeAlias = str | Callable[[], str]

#: ``token_kind`` of a static token (a private app's), answered without ``expires_in``.
STATIC_KIND = "private_app"
#: How long a static token is kept in this client's cache before the broker is asked again.
STATIC_TOKEN_SECONDS = 300


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A HubSpot access token for one portal. ``repr`` (and so ``str``) hides the token.

    ``expires_at`` is on this machine's clock, measured from the moment the request to the
    broker was sent plus the ``expires_in`` it answered: never later than the real expiry.

    A private app's token is static (``token_kind == "private_app"``, :attr:`static`): the
    broker sends no expiry, and ``expires_at`` is then when this client asks the broker again
    (:data:`STATIC_TOKEN_SECONDS` after the request), so a rotation reaches it.
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
    #: ``"oauth"`` (expires, refreshed by the broker) or ``"private_app"`` (static).
    token_kind: str = "oauth"  # noqa: S105 - a kind of token, not one

    @property
    def static(self) -> bool:
        """A private app's token: it does not expire (until rotated in HubSpot)."""
        return self.token_kind == STATIC_KIND

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


#: The broker's token answer (openapi.yaml ``components.schemas.Token``) as this client reads
#: it: each field's JSON type and whether the broker always sends it. Every field is checked
#: against it before use; tests/test_client_contract.py holds it to the spec.
TOKEN_FIELDS: dict[str, tuple[str, bool]] = {
    "access_token": ("string", True),
    "token_type": ("string", True),
    "expires_at": ("string", False),
    "expires_in": ("integer", False),
    "token_kind": ("string", False),
    "hub_id": ("integer", True),
    "user_id": ("integer", False),
    "app": ("string", True),
    "scopes": ("array<string>", True),
    "degraded": ("boolean", True),
}


def _is(kind: str, value: object) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":  # a count or an id: an int >= 0 that is not a bool
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


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
    for name, (kind, required) in TOKEN_FIELDS.items():
        value = body.get(name)
        if (value is not None or required) and not _is(kind, value):
            raise _invalid(f"{name} is not {kind}", response)
    if not body["access_token"]:
        raise _invalid("access_token is empty", response)
    expires_in: int | None = body.get("expires_in")
    kind = body.get("token_kind") or "oauth"
    if expires_in is None:  # only a static token comes without one
        if kind != STATIC_KIND:
            raise _invalid("expires_in is not integer", response)
        expires_in = STATIC_TOKEN_SECONDS
    token = AccessToken(
        access_token=body["access_token"],
        expires_at=sent_at + timedelta(seconds=expires_in),
        hub_id=body["hub_id"],
        app=body["app"],
        scopes=tuple(body["scopes"]),
        user_id=body.get("user_id"),
        degraded=body["degraded"],
        token_kind=kind,
    )
    return token, expires_in
