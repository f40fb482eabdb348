"""The simulator's whole state, and the helpers every endpoint shares.

Not thread-safe by itself: `Simulator` holds its lock around every use.
"""

from __future__ import annotations

import hmac
import time
from collections import Counter, deque
from collections.abc import Mapping

from broker.dev.simulator._model import (
    AccessToken,
    App,
    AuthCode,
    Fault,
    Grant,
    PendingConsent,
    Portal,
    RefreshToken,
    Settings,
    new_access_token,
    new_refresh_token,
)
from broker.dev.simulator._replies import (
    HubSpotError,
    Reply,
    fault_reply,
    oauth_error,
    rate_limited,
)

COUNTER_KEYS = (
    "authorize",
    "authorize.decision",
    "token",
    "token.authorization_code",
    "token.refresh_token",
    "token.other",
    "token.rate_limited",
    "introspect",
    "revoke",
    "contacts",
    "contacts.rate_limited",
    "uninstall",
)
FIRST_APP_ID = 1_000_000


class Store:
    def __init__(self) -> None:
        self.settings = Settings()
        self.clock_offset = 0.0
        self.apps: dict[str, App] = {}
        self.portals: dict[int, Portal] = {}
        self.codes: dict[str, AuthCode] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.pending: dict[str, PendingConsent] = {}
        self.faults: list[Fault] = []
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTER_KEYS, 0))
        self.refreshes_by_hub: Counter[int] = Counter()
        self.api_hits: dict[int, deque[float]] = {}
        #: Per portal: the (simulated) UTC day and the CRM API calls counted on it.
        self.api_days: dict[int, tuple[int, int]] = {}
        self.token_hits: dict[str, deque[float]] = {}

    def now(self) -> float:
        """Simulated wall-clock time: every expiry and `expires_in` is computed from it."""
        return time.time() + self.clock_offset

    def count(self, key: str) -> None:
        self.counters[key] += 1

    def next_app_id(self) -> int:
        return max((app.app_id for app in self.apps.values()), default=FIRST_APP_ID - 1) + 1

    def arrive(self, endpoint: str, token: str) -> None:
        """A call about ``token``: counted, then the first injected fault that matches it (its
        hub, dead tokens included) raised."""
        self.count(endpoint)
        self.check_faults(endpoint, hub_id=self.hub_of(token))

    def check_faults(
        self, endpoint: str, *, hub_id: int | None = None, grant_type: str | None = None
    ) -> None:
        """Answer with the first matching injected fault, if any (raises `HubSpotError`)."""
        for fault in self.faults:
            if not fault.matches(endpoint, hub_id, grant_type):
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
            raise HubSpotError(
                fault_reply(
                    fault,
                    api_rate_limit=self.settings.api_rate_limit,
                    bad_hub_status=self.settings.bad_hub_status,
                )
            )

    def check_token_rate(self, client_id: str) -> None:
        """``token_rate_limit``: count one answered call of a known app in its rolling second;
        429 RATE_LIMIT (not counted) when the second is full."""
        limit = self.settings.token_rate_limit
        if limit is None or client_id not in self.apps:
            return
        now = self.now()
        hits = self.token_hits.setdefault(client_id, deque())
        while hits and hits[0] <= now - 1.0:
            hits.popleft()
        if len(hits) >= limit:
            self.count("token.rate_limited")
            raise HubSpotError(rate_limited())
        hits.append(now)

    def authenticate_client(self, form: Mapping[str, str]) -> App:
        """The app named by the form's client_id, if one of its secrets matches."""
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            raise HubSpotError(oauth_error("invalid_client", "BAD_CLIENT_ID"))
        given = form.get("client_secret", "").encode()
        # Every listed secret is accepted, so a secret can be rotated without downtime.
        if not any(hmac.compare_digest(given, secret.encode()) for secret in app.client_secrets):
            raise HubSpotError(oauth_error("invalid_client", "BAD_CLIENT_SECRET"))
        return app

    def hub_of(self, token: str) -> int | None:
        """The hub a code or token belongs to (dead ones included), for fault targeting."""
        for records in (self.access_tokens, self.refresh_tokens, self.codes):
            record = records.get(token)
            if record is not None:
                return record.grant.hub_id
        return None

    def live_access_token(self, token: str) -> AccessToken | None:
        record = self.access_tokens.get(token)
        if record is None or not record.alive or record.grant.hub_id not in self.portals:
            return None
        return record if self.now() < record.expires_at else None

    def live_refresh_token(self, token: str) -> RefreshToken | None:
        record = self.refresh_tokens.get(token)
        if record is None or not record.alive or record.grant.hub_id not in self.portals:
            return None
        return record

    def new_refresh_token(self, grant: Grant) -> str:
        token = new_refresh_token(self.settings.refresh_token_format)
        self.refresh_tokens[token] = RefreshToken(grant)
        return token

    def issue(self, grant: Grant, refresh_token: str) -> Reply:
        """Mint an access token for `grant` and answer the token endpoint's 200 body."""
        now = self.now()
        ttl = self.settings.access_token_ttl
        if not self.settings.keep_previous_access_tokens:
            for record in self.access_tokens.values():
                if record.grant == grant:
                    record.alive = False
        access_token = new_access_token()
        self.access_tokens[access_token] = AccessToken(grant, issued_at=now, expires_at=now + ttl)
        body: dict[str, object] = {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in": ttl,
            "token_type": "bearer",
            "token_use": "access_token",
            "hub_id": grant.hub_id,
            "scopes": list(grant.scopes),
            "user_id": grant.user_id,
        }
        return Reply(200, json=body, headers={"Cache-Control": "no-store"})

    def kill_grants(
        self, hub_id: int, *, client_id: str | None = None, access_tokens: bool = True
    ) -> int:
        """Kill the refresh (and access) tokens of a hub, as an uninstall does."""
        killed = 0
        records: list[RefreshToken | AccessToken] = list(self.refresh_tokens.values())
        if access_tokens:
            records.extend(self.access_tokens.values())
        for record in records:
            grant = record.grant
            if grant.hub_id != hub_id or record.alive is False:
                continue
            if client_id is None or grant.client_id == client_id:
                record.alive = False
                killed += 1
        return killed
