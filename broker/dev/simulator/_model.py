"""The records the simulator keeps, its settings, and the shapes of HubSpot's secrets.

Everything here is plain data. Validation of control input happens here too, so the
Python API and the HTTP control API reject the same things with the same messages
(always `ValueError`).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal, TypeGuard

Endpoint = Literal["token", "introspect", "revoke", "authorize", "contacts", "uninstall"]
ENDPOINTS: tuple[Endpoint, ...] = (
    "token",
    "introspect",
    "revoke",
    "authorize",
    "contacts",
    "uninstall",
)
FaultKind = Literal["status", "invalid_grant", "bad_hub", "invalid_client"]
FAULT_KINDS: tuple[FaultKind, ...] = ("status", "invalid_grant", "bad_hub", "invalid_client")
# Which endpoints each credential-shaped fault makes sense on.
_FAULT_ENDPOINTS: dict[FaultKind, tuple[Endpoint, ...]] = {
    "status": ENDPOINTS,
    "invalid_grant": ("token",),
    "bad_hub": ("token",),
    "invalid_client": ("token", "introspect", "revoke"),
}

DEFAULT_APP_SCOPES: tuple[str, ...] = ("oauth", "crm.objects.contacts.read")
DEFAULT_USER = "dev@example.com"
DEFAULT_USER_ID = 1_000_001


def new_code() -> str:
    """A code or refresh token in HubSpot's `na1-xxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` shape."""
    return "na1-" + "-".join(secrets.token_hex(n) for n in (2, 2, 2, 2, 6))


def new_refresh_token(token_format: str) -> str:
    """`na1-...` like today's refresh tokens, or a bare UUID like older ones."""
    return str(uuid.uuid4()) if token_format == "uuid" else new_code()


def new_private_app_token() -> str:
    """A private app's access token, in HubSpot's `pat-na1-<uuid>` shape."""
    return f"pat-na1-{uuid.uuid4()}"


#: A private app's token does not expire by itself (until a rotation sets its end).
PRIVATE_APP_TOKEN_SECONDS = 100 * 365 * 86_400.0
#: The client_id a private app's grant is filed under (it has no OAuth client).
PRIVATE_APP_CLIENT = "private-app"


def new_access_token() -> str:
    """An opaque access token, as long as HubSpot's real ones can be (>= 512 chars)."""
    return "CO" + secrets.token_urlsafe(384)


@dataclass(frozen=True)
class App:
    client_id: str
    app_id: int
    client_secrets: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    optional_scopes: tuple[str, ...]


@dataclass
class Portal:
    hub_id: int
    hub_domain: str
    users: dict[int, str]
    """user_id -> user email; the first one is the portal's default user."""
    scopes: frozenset[str] | None
    """Scopes the account can grant at all; None grants whatever an app asks for."""


def new_portal(
    hub_id: int,
    hub_domain: str | None = None,
    user: str = DEFAULT_USER,
    user_id: int = DEFAULT_USER_ID,
    scopes: Iterable[str] | None = None,
) -> Portal:
    return Portal(
        hub_id=hub_id,
        hub_domain=hub_domain or f"hub-{hub_id}.example.com",
        users={user_id: user},
        scopes=None if scopes is None else frozenset(scopes),
    )


@dataclass(frozen=True)
class Grant:
    """What a code and every token derived from it are bound to."""

    client_id: str
    hub_id: int
    user_id: int
    scopes: tuple[str, ...]


@dataclass
class AuthCode:
    grant: Grant
    redirect_uri: str
    code_challenge: str | None
    expires_at: float
    used: bool = False


@dataclass
class RefreshToken:
    grant: Grant
    alive: bool = True


@dataclass
class AccessToken:
    grant: Grant
    issued_at: float
    expires_at: float
    alive: bool = True
    api_calls: int = 0
    """API calls this token authenticated (never the token itself: tests read counts)."""


@dataclass
class PendingConsent:
    """An authorize request waiting for the consent page's Connect or Deny."""

    client_id: str
    redirect_uri: str
    state: str | None
    required: tuple[str, ...]
    optional: tuple[str, ...]
    code_challenge: str | None
    expires_at: float


@dataclass
class Fault:
    endpoint: Endpoint
    kind: FaultKind
    status: int | None
    retry_after: int | None
    remaining: int | None
    """How many more requests it hits; None = until cleared."""
    hub_id: int | None

    def matches(self, endpoint: str, hub_id: int | None, grant_type: str | None) -> bool:
        if self.endpoint != endpoint:
            return False
        if self.hub_id is not None and self.hub_id != hub_id:
            return False
        return self.kind != "invalid_grant" or grant_type == "refresh_token"


def make_fault(
    endpoint: str,
    *,
    status: int | None,
    retry_after: int | None,
    kind: str,
    times: int | None,
    hub_id: int | None,
) -> Fault:
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
    fault_kind = next(k for k in FAULT_KINDS if k == kind)
    fault_endpoint = next(e for e in ENDPOINTS if e == endpoint)
    if fault_endpoint not in _FAULT_ENDPOINTS[fault_kind]:
        raise ValueError(f"a {kind!r} fault only applies to {_FAULT_ENDPOINTS[fault_kind]}")
    if kind == "status" and not (_is_int(status) and 400 <= status <= 599):
        raise ValueError("a 'status' fault needs status: an int from 400 to 599")
    if kind != "status" and status is not None:
        raise ValueError(f"a {kind!r} fault takes no status")
    for name, value in (("retry_after", retry_after), ("times", times)):
        if value is not None and not (_is_int(value) and value >= 0):
            raise ValueError(f"{name} must be a non-negative int")
    if hub_id is not None and not _is_int(hub_id):
        raise ValueError("hub_id must be an int")
    return Fault(fault_endpoint, fault_kind, status, retry_after, times, hub_id)


@dataclass(frozen=True)
class Settings:
    """Everything `Simulator.configure` can change."""

    access_token_ttl: int = 1800
    code_ttl: int = 600
    rotate_refresh_tokens: bool = False
    latency_ms: float | Mapping[str, float] = 0.0
    consent: Literal["auto", "page"] = "auto"
    consent_hub_id: int | None = None
    consent_user_id: int | None = None
    bad_hub_status: int = 400
    """HTTP status of BAD_HUB: 400 per the table, 403 has been seen in the field."""
    api_rate_limit: int = 110
    """Requests per portal per rolling 10 s on the sample CRM API."""
    api_daily_limit: int | None = None
    """Requests per portal per (simulated) UTC day on the sample CRM API, as private apps
    have; None: no daily limit (public apps)."""
    token_rate_limit: float | None = None
    """Token endpoint requests per client_id per rolling second; more answer 429 RATE_LIMIT.
    None: no limit (HubSpot publishes none, yet answers bursts with 429)."""
    # Switches for facts hubspot-oauth.md marks [seen] or [guess]; defaults follow the doc.
    pkce: bool = True
    """Bind code_challenge to the code; False ignores PKCE like a server without it."""
    keep_previous_access_tokens: bool = True
    """False: a refresh kills the access tokens issued before it for the same grant."""
    refresh_token_format: Literal["na1", "uuid"] = "na1"
    error_body: Literal["hybrid", "legacy"] = "hybrid"
    """legacy: token endpoint errors carry only status, message and correlationId."""

    def latency_for(self, endpoint: str) -> float:
        if isinstance(self.latency_ms, Mapping):
            return float(self.latency_ms.get(endpoint, 0.0))
        return float(self.latency_ms)

    def updated(self, changes: Mapping[str, object]) -> Settings:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        copied = {k: dict(v) if isinstance(v, Mapping) else v for k, v in changes.items()}
        for key, value in copied.items():
            _check_setting(key, value)
        return replace(self, **copied)  # type: ignore[arg-type]  # each value checked above

    def as_json(self) -> dict[str, object]:
        latency = self.latency_ms
        return {
            "access_token_ttl": self.access_token_ttl,
            "code_ttl": self.code_ttl,
            "rotate_refresh_tokens": self.rotate_refresh_tokens,
            "latency_ms": dict(latency) if isinstance(latency, Mapping) else latency,
            "consent": self.consent,
            "consent_hub_id": self.consent_hub_id,
            "consent_user_id": self.consent_user_id,
            "bad_hub_status": self.bad_hub_status,
            "api_rate_limit": self.api_rate_limit,
            "api_daily_limit": self.api_daily_limit,
            "token_rate_limit": self.token_rate_limit,
            "pkce": self.pkce,
            "keep_previous_access_tokens": self.keep_previous_access_tokens,
            "refresh_token_format": self.refresh_token_format,
            "error_body": self.error_body,
        }


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _check_setting(key: str, value: object) -> None:
    if key in ("access_token_ttl", "code_ttl", "api_rate_limit"):
        if not (_is_int(value) and value > 0):
            raise ValueError(f"{key} must be a positive int")
    elif key in ("rotate_refresh_tokens", "pkce", "keep_previous_access_tokens"):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a bool")
    elif key == "api_daily_limit":
        if value is not None and not (_is_int(value) and value > 0):
            raise ValueError("api_daily_limit must be a positive int or null")
    elif key == "token_rate_limit":
        if value is not None and not (_is_number(value) and value != 0):
            raise ValueError("token_rate_limit must be a number > 0 or null")
    elif key == "latency_ms":
        if isinstance(value, Mapping):
            bad = [k for k, v in value.items() if k not in ENDPOINTS or not _is_number(v)]
            if bad:
                raise ValueError(f"latency_ms keys must be endpoints with numbers >= 0: {bad}")
        elif not _is_number(value):
            raise ValueError("latency_ms must be a number >= 0 or a dict per endpoint")
    elif key == "consent":
        if value not in ("auto", "page"):
            raise ValueError("consent must be 'auto' or 'page'")
    elif key in ("consent_hub_id", "consent_user_id"):
        if value is not None and not _is_int(value):
            raise ValueError(f"{key} must be an int or null")
    elif key == "bad_hub_status" and value not in (400, 403):
        raise ValueError("bad_hub_status must be 400 or 403")
    elif key == "refresh_token_format" and value not in ("na1", "uuid"):
        raise ValueError("refresh_token_format must be 'na1' or 'uuid'")
    elif key == "error_body" and value not in ("hybrid", "legacy"):
        raise ValueError("error_body must be 'hybrid' or 'legacy'")
