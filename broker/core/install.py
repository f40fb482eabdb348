"""The install flow (DESIGN.md, "Security: Install flow").

``begin`` needs an operator-signed install link (:mod:`broker.core.install_links`) unless
``BROKER_INSTALL_LINKS_REQUIRED`` is off; a link that is present is always verified. It
then creates a single-use ``state`` (in Redis, with a TTL, sealed with a key Redis does not
hold: :mod:`broker.core.install_state`) bound to the browser through a cookie nonce, and a
PKCE S256 verifier; ``complete`` consumes the state exactly once, refuses it unless its seal
verifies, checks the browser binding in constant time and ``return_to`` against the origins
allowed now, exchanges the code, and stores the grant. Any failure raises
:class:`~broker.errors.InstallFailed` (or the app's error) and stores nothing.

A callback with a code and no state (a marketplace install) needs no secret at all, so what
it can cost is bounded per replica: the apps are read from memory (``APPS_SECONDS``), a
code HubSpot refused is refused from memory (``BAD_CODE_SECONDS``), and the exchanges are a
token bucket of ``marketplace_exchange_rate`` (beyond it 429 ``install_throttled``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.apps import AppCatalog
from broker.core.grants import encrypt_grant
from broker.core.install_links import InstallLinks, check_return_to, origin_allowed
from broker.core.install_state import PendingInstall, StateSeal
from broker.core.limits import Budget, Remembered
from broker.core.models import App, PortalKey, PortalRecord, PortalState, TokenGrant
from broker.core.ports import (
    AuditSink,
    Cipher,
    Coordinator,
    OAuthProvider,
    PortalRepository,
    SecretStore,
)
from broker.core.refresh_policy import schedule
from broker.core.signing import Keyring
from broker.errors import BrokerError, InstallFailed, InstallLinkRejected

log = structlog.get_logger(__name__)

#: Seconds the list of apps is read from memory for stateless callbacks.
APPS_SECONDS = 30.0
#: Seconds a code HubSpot refused is refused without asking (codes are single use anyway).
BAD_CODE_SECONDS = 600.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Installed:
    record: PortalRecord
    #: Where to send the browser afterwards (an allowed origin), or None for the page.
    return_to: str | None


@dataclass(frozen=True, slots=True)
class InstallStart:
    authorize_url: str = field(repr=False)
    #: Goes into an HttpOnly cookie; the callback must present it again.
    browser_nonce: str = field(repr=False)


class InstallService:
    def __init__(
        self,
        settings: Settings,
        *,
        portals: PortalRepository,
        coordinator: Coordinator,
        cipher: Cipher,
        secrets_store: SecretStore,
        oauth: OAuthProvider,
        apps: AppCatalog,
        audit: AuditSink,
        links: InstallLinks,
        seal: StateSeal,
        keyring: Keyring | None = None,
    ) -> None:
        self._settings = settings
        self._links = links
        self._seal = seal
        self._keyring = keyring  # fingerprints of installed tokens (broker.core.grants)
        self._portals = portals
        self._coordinator = coordinator
        self._cipher = cipher
        self._secrets = secrets_store
        self._oauth = oauth
        self._catalog = apps
        self._audit = audit
        self._apps: tuple[float, list[App]] = (0.0, [])
        self._exchanges = Budget(settings.marketplace_exchange_rate)
        self._bad_codes = Remembered(BAD_CODE_SECONDS)

    async def begin(
        self,
        app_slug: str,
        *,
        actor: str,
        return_to: str | None = None,
        link: str | None = None,
    ) -> InstallStart:
        """Start a flow: only for an operator-signed ``link`` unless links are not required;
        a present link is always verified and then decides ``return_to`` (and, for a
        re-install link, which portal may be connected)."""
        hub_id: int | None = None
        try:
            if link is not None:
                claims = await self._links.verify(link, app=app_slug)
                if return_to is not None and return_to != claims.return_to:
                    raise InstallLinkRejected(
                        "return_to is set by the install link, not by the URL",
                        code="install_link_invalid",
                    )
                return_to = claims.return_to
                hub_id = claims.hub_id
            elif self._settings.install_links_required:
                raise InstallLinkRejected(
                    "installs start from an install link created by an operator "
                    "(`broker apps install-link`)",
                    code="install_link_required",
                )
        except InstallLinkRejected as exc:
            metrics.INSTALLS.labels(exc.code).inc()
            raise
        check_return_to(return_to, self._settings)
        app = await self._catalog.get(app_slug, installable=True)
        await self._secrets.client_secrets(app.slug)  # fail now, not after the consent page
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        nonce = secrets.token_urlsafe(32)
        pending = PendingInstall(app.slug, actor, verifier, _hash(nonce), return_to, hub_id)
        await self._coordinator.put_state(
            state, await self._seal.seal(state, pending), self._settings.install_state_ttl
        )
        challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
        url = self._oauth.authorize_url(
            app, state=state, code_challenge=challenge, redirect_uri=app.redirect_uri
        )
        return InstallStart(url, nonce)

    async def complete(
        self,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        browser_nonce: str | None,
        callback_url: str,
    ) -> Installed:
        try:
            if not state and code and not error:
                pending = await self._marketplace(callback_url, code)
            else:
                pending = await self._pending(state, error, browser_nonce)
            if not code:
                raise InstallFailed(
                    "the callback has no authorization code", code="install_code_missing"
                )
            record = await self._exchange(pending, code)
        except InstallFailed as exc:
            if exc.code == "install_code_rejected" and code:
                self._bad_codes.add(_hash(code))
            metrics.INSTALLS.labels(exc.code).inc()
            raise
        metrics.INSTALLS.labels(metrics.INSTALLED).inc()
        return Installed(record, pending.return_to)

    async def _marketplace(self, callback_url: str, code: str) -> PendingInstall:
        """HubSpot's marketplace sends the user here with a code and no state. Accepted only
        for an app that opted in (``allow_marketplace_installs``) and whose registered
        redirect URI is exactly this callback; there is no PKCE for such a code."""
        now = time.monotonic()
        if self._apps[0] <= now:
            self._apps = (now + APPS_SECONDS, await self._catalog.all())
        candidates = [
            app
            for app in self._apps[1]
            if app.allow_marketplace_installs
            and app.redirect_uri == callback_url
            and app.retired_at is None
        ]
        if len(candidates) != 1:
            raise InstallFailed("the callback has no state parameter", code="install_state_missing")
        if _hash(code) in self._bad_codes:
            raise InstallFailed("HubSpot refused this code already", code="install_code_rejected")
        self._exchanges.spend(
            now,
            "too many installs without state on this replica; retry shortly",
            code="install_throttled",
            counted=metrics.INSTALLS.labels("install_throttled"),
        )
        return PendingInstall(candidates[0].slug, "marketplace")

    async def _pending(
        self, state: str | None, error: str | None, nonce: str | None
    ) -> PendingInstall:
        if not state:
            raise InstallFailed("the callback has no state parameter", code="install_state_missing")
        sealed = await self._coordinator.take_state(state)  # single use, whatever follows
        if sealed is None:
            raise InstallFailed(
                "this install link is unknown, expired or was already used; start again",
                code="install_state_invalid",
            )
        try:
            pending = await self._seal.open(state, sealed)
        except InstallFailed:
            log.warning("install.state_tampered")  # someone wrote to Redis; never the value
            raise
        if not nonce or not hmac.compare_digest(_hash(nonce), pending.nonce):
            raise InstallFailed(
                "this install was started in another browser; start again from this one",
                code="install_state_mismatch",
            )
        if error:
            raise InstallFailed("the HubSpot user did not grant access", code="install_denied")
        if pending.return_to is not None and not origin_allowed(pending.return_to, self._settings):
            # Allowed when the flow began, not now (BROKER_RETURN_TO_ORIGINS changed since):
            # never an open redirect, and nothing exchanged for a flow that cannot finish.
            raise InstallFailed(
                "this install would return to an origin that is no longer allowed; "
                "nothing was stored, start again from a new install link",
                code="install_return_to_refused",
            )
        return pending

    async def _give_back(self, app: App, grant: TokenGrant) -> None:
        """Revoke a grant that will not be stored, at once (best effort)."""
        with contextlib.suppress(BrokerError):
            await self._oauth.revoke(
                app, await self._secrets.client_secrets(app.slug), grant.refresh_token
            )

    async def _exchange(self, pending: PendingInstall, code: str) -> PortalRecord:
        # Read now: an app retired after the flow began connects nothing.
        app = await self._catalog.get(pending.app, installable=True)
        client_secret = (await self._secrets.client_secrets(app.slug))[0]
        # Expiry on the database clock, taken before the exchange: never later than HubSpot's.
        issued_at = await self._portals.db_now()
        grant = await self._oauth.exchange_code(
            app, client_secret, code=code, code_verifier=pending.verifier
        )
        expected = pending.hub_id
        if expected is not None and grant.hub_id != expected:
            # The consent was for another portal than the link's: give the grant back at
            # once (best effort; it is never stored) and say so.
            await self._give_back(app, grant)
            raise InstallFailed(
                f"this install link re-connects portal {expected}, but portal {grant.hub_id} "
                "was chosen on HubSpot's consent page; nothing was stored",
                code="install_wrong_portal",
            )
        key = PortalKey(app.slug, grant.hub_id, grant.user_id if app.user_level else None)
        existing = await self._portals.get_portal(key)
        if existing is not None and existing.state is PortalState.REVOKED and expected is None:
            # An operator revoked it: only a link minted for this portal (an operator's
            # decision) may connect it again, not any app-wide link or marketplace install.
            await self._give_back(app, grant)
            raise InstallFailed(
                f"portal {grant.hub_id} was revoked by an operator; only an install link minted "
                "for this portal (`broker portals install-link`) can connect it again; "
                "nothing was stored",
                code="install_portal_revoked",
            )
        info = await self._oauth.introspect(app, client_secret, grant.access_token)
        if app.user_level and key.user_id is None:
            raise InstallFailed("HubSpot did not say which user installed", code="install_no_user")
        encrypted = await encrypt_grant(
            self._cipher, self._keyring, key, grant, *schedule(issued_at, grant.expires_in)
        )
        record = await self._portals.install(
            key,
            encrypted,
            hub_domain=info.hub_domain,
            scopes=grant.scopes or info.scopes,
            actor=info.user or pending.actor,
        )
        self._audit.record(
            "portal.installed",
            actor=pending.actor,
            key=key,
            hub_domain=info.hub_domain,
            scopes=list(record.scopes),
        )
        return record
