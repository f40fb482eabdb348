"""`Simulator`: the fake HubSpot's state, its control methods, and its endpoints' entry points.

Thread safety: one lock guards the whole state. Tests call the control methods from their
own thread while the server answers on its event loop; every method takes the lock for
its whole (short, non-blocking) body, so each HTTP call sees a consistent state.

Secrets: the simulator logs nothing and never puts a token or client secret in a page, a
counter or an exception message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from broker.dev.simulator import _api, _introspection, _oauth
from broker.dev.simulator._model import (
    DEFAULT_APP_SCOPES,
    DEFAULT_USER,
    DEFAULT_USER_ID,
    PRIVATE_APP_CLIENT,
    PRIVATE_APP_TOKEN_SECONDS,
    AccessToken,
    App,
    AuthCode,
    Grant,
    Portal,
    Settings,
    make_fault,
    new_code,
    new_portal,
    new_private_app_token,
)
from broker.dev.simulator._replies import HubSpotError, Reply, legacy_error
from broker.dev.simulator._store import Store

_Arg = TypeVar("_Arg")


@dataclass(frozen=True)
class AccessTokenInfo:
    """What the simulator knows about one access token (for test assertions)."""

    client_id: str
    hub_id: int
    user_id: int
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    expires_in: int
    """Seconds left on the simulated clock; negative once expired."""
    active: bool
    """Not expired, not revoked, its grant not killed, its portal not removed."""
    api_calls: int
    """API calls (contacts, uninstall) it authenticated so far."""


class Simulator:
    """A faithful fake of HubSpot's OAuth server and one CRM endpoint (see hubspot-oauth.md)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._store = Store()

    # -- apps, portals, settings ----------------------------------------------------------

    def add_app(
        self,
        client_id: str,
        client_secrets: Sequence[str],
        redirect_uris: Sequence[str],
        scopes: Sequence[str] = DEFAULT_APP_SCOPES,
        optional_scopes: Sequence[str] = (),
        *,
        app_id: int | None = None,
    ) -> int:
        """Register (or replace) an app; every listed secret is accepted. Returns its app_id."""
        if isinstance(client_secrets, str) or isinstance(redirect_uris, str):
            raise ValueError("client_secrets and redirect_uris are lists, not strings")
        if not client_id or not client_secrets or not all(client_secrets):
            raise ValueError("an app needs a client_id and at least one non-empty secret")
        if not redirect_uris or not all(redirect_uris):
            raise ValueError("an app needs at least one redirect URI")
        for name, value in (("scopes", scopes), ("optional_scopes", optional_scopes)):
            if isinstance(value, str) or not all(isinstance(s, str) and s for s in value):
                raise ValueError(f"{name} must be a list of scope names")
        with self._lock:
            existing = self._store.apps.get(client_id)
            if app_id is None:
                app_id = existing.app_id if existing else self._store.next_app_id()
            self._store.apps[client_id] = App(
                client_id=client_id,
                app_id=app_id,
                client_secrets=tuple(client_secrets),
                redirect_uris=tuple(redirect_uris),
                scopes=tuple(scopes),
                optional_scopes=tuple(optional_scopes),
            )
            return app_id

    def add_portal(
        self,
        hub_id: int,
        hub_domain: str | None = None,
        user: str = DEFAULT_USER,
        user_id: int = DEFAULT_USER_ID,
        scopes: Sequence[str] | None = None,
    ) -> None:
        """Create (or replace) a HubSpot account with one user.

        `scopes` are the scopes the account can grant at all; None (default) grants
        whatever an app asks for. Optional scopes it cannot grant are dropped silently,
        required ones fail the install.
        """
        if isinstance(hub_id, bool) or not isinstance(hub_id, int) or hub_id <= 0:
            raise ValueError("hub_id must be a positive int")
        with self._lock:
            self._store.portals[hub_id] = new_portal(hub_id, hub_domain, user, user_id, scopes)

    def add_user(self, hub_id: int, user: str, user_id: int) -> None:
        """Add another user to a portal (for user-level apps and `consent_user_id`)."""
        with self._lock:
            self._portal(hub_id).users[user_id] = user

    def remove_portal(self, hub_id: int) -> None:
        """Delete the account: its tokens die and refreshes answer BAD_HUB."""
        with self._lock:
            self._portal(hub_id)
            del self._store.portals[hub_id]

    def configure(self, **changes: object) -> Settings:
        """Change settings (see `Settings`); unknown keys or bad values raise ValueError."""
        with self._lock:
            self._store.settings = self._store.settings.updated(changes)
            return self._store.settings

    @property
    def settings(self) -> Settings:
        with self._lock:
            return self._store.settings

    # -- faults, grants, clock -----------------------------------------------------------

    def add_fault(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        kind: str = "status",
        times: int | None = None,
        hub_id: int | None = None,
    ) -> None:
        """Make `endpoint` answer with a fault, `times` times (None: until cleared).

        Faults are checked in the order they were added, after the call is counted and
        before any other check. `hub_id` limits a fault to calls about that portal.
        """
        fault = make_fault(
            endpoint, status=status, retry_after=retry_after, kind=kind, times=times, hub_id=hub_id
        )
        with self._lock:
            if fault.remaining != 0:
                self._store.faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._store.faults.clear()

    def kill_grant(
        self, hub_id: int, *, client_id: str | None = None, access_tokens: bool = True
    ) -> int:
        """Invalidate every refresh token of `hub_id` (of one app, or all), as an uninstall
        does; its access tokens die too unless `access_tokens` is False. Returns how many
        tokens died."""
        with self._lock:
            self._portal(hub_id)
            return self._store.kill_grants(hub_id, client_id=client_id, access_tokens=access_tokens)

    def issue_code(
        self,
        client_id: str,
        redirect_uri: str,
        hub_id: int,
        *,
        user_id: int | None = None,
        scopes: Sequence[str] | None = None,
    ) -> str:
        """A code as a marketplace-initiated install delivers it (no state, no PKCE)."""
        with self._lock:
            app = self._store.apps.get(client_id)
            if app is None or redirect_uri not in app.redirect_uris:
                raise ValueError("unknown client_id or unregistered redirect_uri")
            portal = self._portal(hub_id)
            uid = next(iter(portal.users)) if user_id is None else user_id
            if uid not in portal.users:
                raise ValueError(f"user {uid} is not a member of portal {hub_id}")
            code = new_code()
            grant = Grant(client_id, hub_id, uid, tuple(app.scopes if scopes is None else scopes))
            expires_at = self._store.now() + self._store.settings.code_ttl
            self._store.codes[code] = AuthCode(grant, redirect_uri, None, expires_at)
            return code

    def create_private_app_token(
        self, hub_id: int, scopes: Sequence[str] = DEFAULT_APP_SCOPES
    ) -> str:
        """A private app's access token for the portal (`pat-na1-<uuid>`): accepted by the
        API endpoints as an OAuth access token is, and never expiring until rotated."""
        with self._lock:
            portal = self._portal(hub_id)
            grant = Grant(PRIVATE_APP_CLIENT, hub_id, next(iter(portal.users)), tuple(scopes))
            return self._store_private(grant)

    def rotate_private_app_token(self, token: str, *, old_expires_in: float = 0.0) -> str:
        """HubSpot's "rotate" in a private app's settings: a new token with the same grant;
        the old one keeps working for `old_expires_in` seconds (0: dies now)."""
        if isinstance(old_expires_in, bool) or not isinstance(old_expires_in, int | float):
            raise ValueError("old_expires_in must be a number of seconds")
        with self._lock:
            old = self._store.access_tokens.get(token)
            if old is None or old.grant.client_id != PRIVATE_APP_CLIENT:
                raise ValueError("not a private app's token")
            old.expires_at = min(old.expires_at, self._store.now() + max(0.0, old_expires_in))
            return self._store_private(old.grant)

    def _store_private(self, grant: Grant) -> str:
        token, now = new_private_app_token(), self._store.now()
        self._store.access_tokens[token] = AccessToken(grant, now, now + PRIVATE_APP_TOKEN_SECONDS)
        return token

    def advance_clock(self, seconds: float) -> float:
        """Move simulated time forward (never back); returns the total offset."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("advance needs a number of seconds >= 0")
        with self._lock:
            self._store.clock_offset += seconds
            return self._store.clock_offset

    def now(self) -> float:
        """The simulated wall clock (epoch seconds)."""
        with self._lock:
            return self._store.now()

    # -- observations ---------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Calls per endpoint (the token endpoint also per grant type), failures included."""
        with self._lock:
            return dict(self._store.counters)

    def refreshes_by_hub(self) -> dict[int, int]:
        """refresh_token grant calls per portal, for refresh tokens the simulator knows."""
        with self._lock:
            return dict(self._store.refreshes_by_hub)

    def is_refresh_token_valid(self, token: str) -> bool:
        with self._lock:
            return self._store.live_refresh_token(token) is not None

    def access_token_info(self, token: str) -> AccessTokenInfo | None:
        """None for a token the simulator never issued."""
        with self._lock:
            record = self._store.access_tokens.get(token)
            if record is None:
                return None
            grant = record.grant
            return AccessTokenInfo(
                client_id=grant.client_id,
                hub_id=grant.hub_id,
                user_id=grant.user_id,
                scopes=grant.scopes,
                issued_at=record.issued_at,
                expires_at=record.expires_at,
                expires_in=int(record.expires_at - self._store.now()),
                active=self._store.live_access_token(token) is not None,
                api_calls=record.api_calls,
            )

    def reset(self) -> None:
        """Forget everything: apps, portals, tokens, faults, counters, settings, clock."""
        with self._lock:
            self._store = Store()

    def latency_for(self, endpoint: str) -> float:
        """Configured delay in seconds before `endpoint` answers."""
        with self._lock:
            return self._store.settings.latency_for(endpoint) / 1000.0

    # -- entry points of the HTTP layer (app.py), one per HubSpot endpoint ----------------

    def handle_authorize(self, params: Mapping[str, str]) -> Reply:
        return self._answer(_oauth.authorize, params)

    def handle_authorize_decision(self, form: Mapping[str, str]) -> Reply:
        return self._answer(_oauth.decide, form)

    def handle_token(self, form: Mapping[str, str] | None) -> Reply:
        return self._answer(_oauth.token, form)

    def handle_introspect(self, form: Mapping[str, str] | None) -> Reply:
        return self._answer(_introspection.introspect, form)

    def handle_revoke(self, form: Mapping[str, str] | None) -> Reply:
        return self._answer(_introspection.revoke, form)

    def handle_v1_access_token(self, token: str) -> Reply:
        return self._answer(_introspection.v1_access_token, token)

    def handle_v1_refresh_token(self, token: str) -> Reply:
        return self._answer(_introspection.v1_refresh_token, token)

    def handle_v1_delete_refresh_token(self, token: str) -> Reply:
        return self._answer(_introspection.v1_delete_refresh_token, token)

    def handle_uninstall(self, authorization: str | None) -> Reply:
        return self._answer(_api.uninstall, authorization)

    def handle_contacts(
        self, authorization: str | None, query: Mapping[str, str], url: str
    ) -> Reply:
        with self._lock:
            try:
                return _api.contacts(self._store, authorization, query, url)
            except HubSpotError as error:
                return error.reply

    def _answer(self, handler: Callable[[Store, _Arg], Reply], argument: _Arg) -> Reply:
        with self._lock:
            try:
                reply = handler(self._store, argument)
            except HubSpotError as error:
                reply = error.reply
            if self._store.settings.error_body == "legacy":
                return legacy_error(reply)
            return reply

    def _portal(self, hub_id: int) -> Portal:
        portal = self._store.portals.get(hub_id)
        if portal is None:
            raise ValueError(f"unknown portal {hub_id}")
        return portal
