"""What the simulator answers, as plain data, and HubSpot's error bodies.

The logic modules return or raise a `Reply`; only `app.py` turns one into a Starlette
response. Error bodies follow hubspot-oauth.md: the token endpoints answer the hybrid
RFC 6749 + legacy body, the CRM API answers `{status, message, correlationId, category}`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.dev.simulator import _pages
from broker.dev.simulator._model import Fault

# HubSpot's wording, per `status`; `error_description` repeats it as HubSpot does.
OAUTH_MESSAGES: dict[str, str] = {
    "BAD_GRANT_TYPE": "missing or unknown grant type",
    "BAD_CLIENT_ID": "missing or unknown client id",
    "BAD_CLIENT_SECRET": "missing or invalid client secret",
    "BAD_AUTH_CODE": "missing or unknown auth code",
    "EXPIRED_AUTH_CODE": "auth code is expired",
    "MISMATCH_REDIRECT_URI_AUTH_CODE": "redirect_uri does not match the one used to authorize",
    "BAD_CODE_VERIFIER": "code_verifier does not match the code_challenge",
    "BAD_REFRESH_TOKEN": "missing or invalid refresh token",
    "BAD_HUB": "the portal for this grant does not exist or is not accessible",
    "BAD_REQUEST": "request body must be application/x-www-form-urlencoded",
}


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: a JSON body, an HTML page, or no body at all."""

    status: int
    json: Mapping[str, object] | None = None
    html: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class HubSpotError(Exception):
    """Raised by the logic to answer at once with `reply` (an error, or a fault)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def correlation_id() -> str:
    return str(uuid.uuid4())


def oauth_error(error: str, status: str, *, http: int = 400, message: str | None = None) -> Reply:
    """The token endpoints' hybrid error body (January 2026 onwards, every version)."""
    text = message or OAUTH_MESSAGES[status]
    cid = correlation_id()
    body = {
        "error": error,
        "error_description": text,
        "status": status,
        "message": text,
        "correlationId": cid,
    }
    return Reply(http, json=body, headers={"X-HubSpot-Correlation-Id": cid})


def legacy_error(reply: Reply) -> Reply:
    """The same error as bodies before January 2026 had it: no RFC 6749 fields."""
    if reply.json is None or "error" not in reply.json or "status" not in reply.json:
        return reply
    body = {k: v for k, v in reply.json.items() if k not in ("error", "error_description")}
    return Reply(reply.status, json=body, html=reply.html, headers=reply.headers)


def api_error(http: int, category: str, message: str, **extra: object) -> Reply:
    """The CRM API's (and the v1 lookups') error body."""
    cid = correlation_id()
    body: dict[str, object] = {"status": "error", "message": message, "correlationId": cid}
    body.update(extra)
    body["category"] = category
    return Reply(http, json=body, headers={"X-HubSpot-Correlation-Id": cid})


def rate_limit_headers(limit: int, remaining: int) -> dict[str, str]:
    return {
        "X-HubSpot-RateLimit-Max": str(limit),
        "X-HubSpot-RateLimit-Remaining": str(max(remaining, 0)),
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    }


def ten_secondly_limit(limit: int) -> Reply:
    return _limited("ten_secondly_rolling", "TEN_SECONDLY_ROLLING", rate_limit_headers(limit, 0))


def daily_limit(limit: int) -> Reply:
    """The daily limit's 429 (private apps): its policy, and the daily headers at zero."""
    return _limited("daily", "DAILY", daily_headers(limit, 0))


def _limited(limit: str, policy: str, headers: dict[str, str]) -> Reply:
    """HubSpot's 429 for one of its rate limits, with that limit's headers."""
    cid = correlation_id()
    body = {
        "status": "error",
        "message": f"You have reached your {limit} limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": cid,
        "policyName": policy,
    }
    return Reply(429, json=body, headers=headers | {"X-HubSpot-Correlation-Id": cid})


def daily_headers(limit: int, remaining: int) -> dict[str, str]:
    return {
        "X-HubSpot-RateLimit-Daily": str(limit),
        "X-HubSpot-RateLimit-Daily-Remaining": str(max(remaining, 0)),
    }


def rate_limited() -> Reply:
    """HubSpot's 429 outside the CRM API (the token endpoint's, hubspot-oauth.md)."""
    body = {
        "status": "error",
        "message": "You have reached your rate limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id(),
    }
    return Reply(429, json=body)


# Retry-After when a fault names none: 477 documents one; 423 means "wait >= 2 s".
_DEFAULT_RETRY_AFTER = {477: 5, 423: 2}


def fault_reply(fault: Fault, *, api_rate_limit: int, bad_hub_status: int) -> Reply:
    """The answer of an injected fault, shaped like HubSpot (or its CDN) would send it."""
    if fault.kind == "invalid_grant":
        return oauth_error("invalid_grant", "BAD_REFRESH_TOKEN")
    if fault.kind == "invalid_client":
        return oauth_error("invalid_client", "BAD_CLIENT_SECRET")
    if fault.kind == "bad_hub":
        return oauth_error("access_denied", "BAD_HUB", http=bad_hub_status)
    assert fault.status is not None  # make_fault guarantees it for kind="status"
    reply = _status_reply(fault.status, fault.endpoint, api_rate_limit)
    retry_after = fault.retry_after
    if retry_after is None:
        retry_after = _DEFAULT_RETRY_AFTER.get(fault.status)
    if retry_after is None:
        return reply
    headers = dict(reply.headers) | {"Retry-After": str(retry_after)}
    return Reply(reply.status, json=reply.json, html=reply.html, headers=headers)


def _status_reply(status: int, endpoint: str, api_rate_limit: int) -> Reply:
    if status == 429 and endpoint == "contacts":
        return ten_secondly_limit(api_rate_limit)
    if status == 429:
        return rate_limited()
    if status in (502, 503, 504) or 505 <= status <= 599:
        return Reply(status, html=_pages.gateway_error(status))
    if status == 500:
        return api_error(500, "INTERNAL_ERROR", "internal error")
    if status == 477:
        return api_error(477, "MIGRATION_IN_PROGRESS", "This account is being migrated.")
    if status == 423:
        return api_error(423, "LOCKED", "The resource is locked; try again in a few seconds.")
    if status == 501:
        return api_error(501, "NOT_IMPLEMENTED", "not implemented")
    return api_error(status, "SIMULATED_ERROR", f"simulated HTTP {status}")
