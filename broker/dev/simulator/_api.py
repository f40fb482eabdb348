"""The bearer-token side: one sample CRM endpoint and the app uninstall call."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from broker.dev.simulator._model import AccessToken
from broker.dev.simulator._replies import (
    HubSpotError,
    Reply,
    api_error,
    daily_headers,
    daily_limit,
    rate_limit_headers,
    ten_secondly_limit,
)
from broker.dev.simulator._store import Store

CONTACTS_SCOPE = "crm.objects.contacts.read"
CONTACTS_PER_PORTAL = 25
_WINDOW_SECONDS = 10.0
_ALWAYS_RETURNED = ("createdate", "hs_object_id", "lastmodifieddate")
_DEFAULT_PROPERTIES = ("email", "firstname", "lastname")
_FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances")
_NO_CREDENTIALS = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
    "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


def bearer_token(authorization: str | None) -> str:
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _authenticate(store: Store, given: str) -> AccessToken:
    record = store.access_tokens.get(given)
    live = store.live_access_token(given)
    if live is not None:
        live.api_calls += 1
        return live
    if record is not None and record.alive and record.grant.hub_id in store.portals:
        ago = max(1, math.floor(store.now() - record.expires_at))
        message = f"The OAuth token used to make this call expired {ago} second(s) ago."
        raise HubSpotError(api_error(401, "EXPIRED_AUTHENTICATION", message))
    raise HubSpotError(api_error(401, "INVALID_AUTHENTICATION", _NO_CREDENTIALS))


def uninstall(store: Store, authorization: str | None) -> Reply:
    """`DELETE /appinstalls/2026-03/external-install`: the app removes itself from a portal."""
    store.count("uninstall")
    given = bearer_token(authorization)
    store.check_faults("uninstall", hub_id=store.hub_of(given))
    grant = _authenticate(store, given).grant
    store.kill_grants(grant.hub_id, client_id=grant.client_id)
    return Reply(204)


def contacts(store: Store, authorization: str | None, query: Mapping[str, str], url: str) -> Reply:
    """`GET /crm/v3/objects/contacts`: scope check, per-portal rate limit, one page."""
    store.count("contacts")
    given = bearer_token(authorization)
    store.check_faults("contacts", hub_id=store.hub_of(given))
    grant = _authenticate(store, given).grant
    if CONTACTS_SCOPE not in grant.scopes:
        raise HubSpotError(
            api_error(
                403,
                "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call. "
                "Read more about required scopes here: https://developers.hubspot.com/scopes.",
                errors=[
                    {
                        "message": "One or more of the following scopes are required.",
                        "context": {"requiredGranularScopes": [CONTACTS_SCOPE]},
                    }
                ],
                links={"scopes": "https://developers.hubspot.com/scopes"},
            )
        )
    daily = _take_daily_limit(store, grant.hub_id)
    remaining = _take_rate_limit(store, grant.hub_id)
    limit = _int_param(query, "limit", default=10, low=1, high=100)
    after = _int_param(query, "after", default=0, low=0, high=CONTACTS_PER_PORTAL)
    wanted = tuple(p for p in query.get("properties", "").split(",") if p)
    end = min(after + limit, CONTACTS_PER_PORTAL)
    body: dict[str, object] = {
        "results": [
            _contact(grant.hub_id, i, wanted or _DEFAULT_PROPERTIES) for i in range(after, end)
        ]
    }
    if end < CONTACTS_PER_PORTAL:
        body["paging"] = {"next": {"after": str(end), "link": f"{url}?after={end}&limit={limit}"}}
    headers = rate_limit_headers(store.settings.api_rate_limit, remaining)
    if daily is not None:
        headers |= daily_headers(*daily)
    return Reply(200, json=body, headers=headers)


def _take_rate_limit(store: Store, hub_id: int) -> int:
    """Record one call in the portal's rolling 10 s window; 429 when it is full."""
    now = store.now()
    hits = store.api_hits.setdefault(hub_id, deque())
    while hits and hits[0] <= now - _WINDOW_SECONDS:
        hits.popleft()
    limit = store.settings.api_rate_limit
    if len(hits) >= limit:
        store.count("contacts.rate_limited")
        raise HubSpotError(ten_secondly_limit(limit))
    hits.append(now)
    return limit - len(hits)


def _take_daily_limit(store: Store, hub_id: int) -> tuple[int, int] | None:
    """Count one call on the portal's (simulated) day when a daily limit is set: the limit
    and what is left, or 429 DAILY once it is used up (checked before the 10 s window,
    which a refused call does not use)."""
    limit = store.settings.api_daily_limit
    if limit is None:
        return None
    today = int(store.now() // 86400)
    day, used = store.api_days.get(hub_id, (today, 0))
    used = used if day == today else 0
    if used >= limit:
        store.count("contacts.rate_limited")
        raise HubSpotError(daily_limit(limit))
    store.api_days[hub_id] = (today, used + 1)
    return limit, limit - used - 1


def _int_param(query: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        message = f"Invalid input: '{name}' must be an integer from {low} to {high}."
        raise HubSpotError(api_error(400, "VALIDATION_ERROR", message))
    return int(raw)


def _contact(hub_id: int, index: int, wanted: tuple[str, ...]) -> dict[str, object]:
    contact_id = str(hub_id % 1000 * 1000 + index + 1)
    created = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=index)
    updated = created + timedelta(hours=index + 1)
    first = _FIRST_NAMES[index % len(_FIRST_NAMES)]
    last = f"Tester{index + 1}"
    known = {
        "createdate": _iso(created),
        "email": f"{first.lower()}.{last.lower()}@example.com",
        "firstname": first,
        "hs_object_id": contact_id,
        "lastmodifieddate": _iso(updated),
        "lastname": last,
    }
    properties = {name: known.get(name) for name in (*wanted, *_ALWAYS_RETURNED)}
    return {
        "id": contact_id,
        "properties": properties,
        "createdAt": _iso(created),
        "updatedAt": _iso(updated),
        "archived": False,
    }


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
