"""Every error the broker client raises on purpose.

Each failure to obtain a token is a :class:`BrokerClientError` carrying what the broker
said: the HTTP ``status`` (``None`` when no answer arrived), its stable machine-readable
``code``, the human ``detail``, and the broker's ``request_id`` (quote it to the broker's
owners). Messages and reprs never contain an access token or the caller key: they are
built only from the status, the code, the detail and the request id.

    BrokerClientError          anything else, e.g. a malformed answer (code
    │                          ``invalid_response``) or a status the broker does not document
    ├── Unauthorized           401 unauthenticated, 403 forbidden: fix the key or its grants
    ├── InvalidRequest         400 / 422 invalid_request: a bad app, user_id or min_ttl
    │                          (``min_ttl_max``: the broker's cap, when min_ttl was too large)
    ├── PortalNotFound         404 portal_not_found, app_not_found (route_not_found: the
    │                          base_url does not point at a broker)
    ├── NeedsReauth            409 needs_reauth: the grant is dead; the portal must be
    │                          installed again
    ├── Quarantined            409 quarantined: an operator holds the portal
    ├── PortalRevoked          410 revoked
    ├── RateLimited            429: this caller asks too often; ``retry_after`` seconds
    ├── BrokerUnavailable      502 / 503 / 504, or no answer at all (connection refused,
    │                          timeout): ``retry_after`` seconds when the broker sent one
    └── ServerError            500 internal, token_undecryptable: a bug or a corrupt stored
                               token at the broker; tell its owners the request id

:data:`PROBLEM_CODES` maps every problem ``code`` the token route documents (openapi.yaml)
to its class; a code it does not know is classified by its status alone.

Only :class:`RateLimited` and :class:`BrokerUnavailable` are worth asking again (see
``RetryPolicy``); every other error stays the same until a person changes something.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

_MAX_DETAIL = 500


class BrokerClientError(Exception):
    """Base of every error the client raises on purpose."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
    ) -> None:
        self.detail = detail[:_MAX_DETAIL]
        self.status = status
        self.code = code
        self.request_id = request_id
        super().__init__(self.detail)

    def __str__(self) -> str:
        where = f"status={self.status} code={self.code}"
        if self.request_id is not None:
            where += f" request_id={self.request_id}"
        return f"{self.detail} ({where})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"detail={self.detail!r}, request_id={self.request_id!r})"
        )


class Unauthorized(BrokerClientError):
    """401 (the caller key is missing, unknown, expired or disabled) or 403 (the caller may
    not read this app's or this portal's tokens)."""


class InvalidRequest(BrokerClientError):
    """400 / 422: the broker rejected a parameter."""

    #: The broker's largest allowed ``min_ttl`` when the rejected parameter was a too-large
    #: ``min_ttl`` (the problem's ``errors`` item for it names its ``maximum``), else None.
    min_ttl_max: int | None = None


class PortalNotFound(BrokerClientError):
    """404: no such portal (or app) at the broker."""


class NeedsReauth(BrokerClientError):
    """409 ``needs_reauth``: HubSpot rejected the portal's refresh token."""


class Quarantined(BrokerClientError):
    """409 ``quarantined``: an operator stopped serving this portal's tokens."""


class PortalRevoked(BrokerClientError):
    """410: the portal was revoked."""


class _Transient(BrokerClientError):
    """An answer that may change by itself; ``retry_after`` is the broker's hint (seconds)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, status=status, code=code, request_id=request_id)
        self.retry_after = retry_after


class RateLimited(_Transient):
    """429: the broker limits how often this caller may ask."""


class BrokerUnavailable(_Transient):
    """502 / 503 / 504, or the broker could not be reached at all (``status`` is None)."""


class ServerError(BrokerClientError):
    """500: the broker failed on its own (a bug, or a stored token it cannot decrypt)."""


#: Every problem ``code`` the token route documents, with the class it becomes. The broker's
#: codes are stable; tests/test_client_contract.py checks this table against openapi.yaml.
PROBLEM_CODES: dict[str, type[BrokerClientError]] = {
    "unauthenticated": Unauthorized,
    "forbidden": Unauthorized,
    "invalid_request": InvalidRequest,
    "portal_not_found": PortalNotFound,
    "app_not_found": PortalNotFound,
    "needs_reauth": NeedsReauth,
    "quarantined": Quarantined,
    "revoked": PortalRevoked,
    "rate_limited": RateLimited,
    "auth_throttled": RateLimited,
    "internal": ServerError,
    "token_undecryptable": ServerError,
    **dict.fromkeys(
        (
            "upstream_unavailable",
            "hubspot_error",
            "hubspot_unavailable",
            "hubspot_rate_limited",
            "app_misconfigured",
            "refresh_outcome_unknown",
            "vault_unavailable",
            "vault_sealed",
            "vault_forbidden",
            "vault_login_failed",
            "encrypt_failed",
            "database_unavailable",
            "redis_unavailable",
            "lock_contention",
            "identity_provider_unavailable",
        ),
        BrokerUnavailable,
    ),
}

#: A code the table does not know is classified by its status.
_BY_STATUS: dict[int, type[BrokerClientError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: PortalNotFound,
    410: PortalRevoked,
    422: InvalidRequest,
    429: RateLimited,
    500: ServerError,
    502: BrokerUnavailable,
    503: BrokerUnavailable,
    504: BrokerUnavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The problem+json body as a dict, or {} when the answer is not one (e.g. a proxy page)."""
    if "json" not in response.headers.get("content-type", ""):
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def classify(status: int, code: str) -> type[BrokerClientError]:
    """The class of a broker answer with ``status`` and problem ``code``: by the code when
    the broker documents it, else by the status (a proxy's page, a newer broker's code)."""
    return PROBLEM_CODES.get(code) or _BY_STATUS.get(status, BrokerClientError)


def _min_ttl_max(body: dict[str, Any]) -> int | None:
    """The ``maximum`` of the problem's ``errors`` item for ``min_ttl``, if it names one."""
    errors = body.get("errors")
    for item in errors if isinstance(errors, list) else ():
        if isinstance(item, dict) and item.get("field") == "min_ttl":
            maximum = item.get("maximum")
            if isinstance(maximum, int) and not isinstance(maximum, bool) and maximum >= 0:
                return maximum
    return None


def error_from_response(response: httpx.Response) -> BrokerClientError:
    """The typed error for a non-2xx broker answer. Only the problem's ``code``, ``detail``,
    ``request_id`` and ``errors[].maximum`` are read; the rest of the body is never echoed."""
    status = response.status_code
    body = _problem(response)
    code = body.get("code")
    code = code if isinstance(code, str) and code else f"http_{status}"
    detail = body.get("detail")
    if not isinstance(detail, str) or not detail:
        detail = f"the broker answered {status} {response.reason_phrase}".rstrip()
    request_id = body.get("request_id")
    if not isinstance(request_id, str):
        request_id = response.headers.get("x-request-id")
    cls = classify(status, code)
    if issubclass(cls, _Transient):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return cls(detail, status=status, code=code, request_id=request_id, retry_after=retry_after)
    error = cls(detail, status=status, code=code, request_id=request_id)
    if isinstance(error, InvalidRequest):
        error.min_ttl_max = _min_ttl_max(body)
    return error


def error_from_transport(exc: httpx.TransportError) -> BrokerUnavailable:
    """No answer from the broker. httpx's message names the failure and at most the URL
    (hub id, app and min_ttl; never the caller key, which travels in a header)."""
    error = BrokerUnavailable(
        f"the broker could not be reached: {type(exc).__name__}: {exc}", code="unreachable"
    )
    error.__cause__ = exc
    return error
