"""Operator sign-in through an OpenID Provider: the authorization code flow with PKCE (S256),
and the IdP's groups mapped to roles (``BROKER_OIDC_ROLES``, :mod:`broker.config_sso`).

Security properties:

- **The flow lives in the browser, sealed**: :meth:`SsoLogin.begin` makes a random
  ``state``, ``nonce`` and PKCE verifier and seals them with an expiry
  (:meth:`~broker.core.signing.Keyring.seal`, the session key under its own label, so the
  value is never a session or CSRF token). The web layer keeps it in a short-lived cookie
  for ``/admin/oidc``; nothing is stored server-side until the callback.
- **The callback is checked before the IdP is asked**: the cookie must open, be unexpired,
  and name the ``state`` of the callback (constant time), so a callback this browser did not
  start (login CSRF, a code injected from another flow) is refused (``sso_state_invalid``);
  an ``iss`` parameter (RFC 9207) must be the issuer. Each flow is used once: its ``state``
  is claimed in Redis for the flow's lifetime, so a replayed callback is refused
  (``sso_state_used``); with Redis down the IdP's single-use code is the backstop.
- **The IdP's word**: :class:`~broker.core.ports.IdentityProvider` exchanges the code with
  the verifier and verifies the ID token (signature, ``iss``, ``aud``/``azp``, ``exp``,
  ``nonce``). Roles come only from the groups claim through the mapping; a person in no
  mapped group, or whose groups grant no ``portals:admin``, is refused (403 ``sso_no_role``).
- **Audited**: ``admin.sso_login`` and ``admin.sso_refused`` with the actor
  ``oidc:<email or subject>``, as every action taken in that session is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from broker import metrics
from broker.config_sso import GroupGrant
from broker.core.limits import Budget
from broker.core.models import Caller, Role
from broker.core.ports import AuditSink, Coordinator, IdentityProvider, SsoIdentity
from broker.core.signing import Keyring, Purpose
from broker.errors import BrokerError, IdentityProviderUnavailable, SsoFailed, SsoNoRole

#: A sign-in must come back from the IdP within this many seconds.
FLOW_SECONDS = 600
#: Sign-ins begun per second on this replica (two seconds of burst): each costs a Vault
#: MAC and anyone who reaches the internal listener may start one. Beyond: 429.
START_RATE = 5.0
#: Its own label under the session key: a flow is never a session's or a CSRF token's.
_LABEL = "oidc-flow"
_FIELDS = {"state", "nonce", "verifier", "redirect_uri", "expires"}


@dataclass(frozen=True, slots=True)
class SsoStart:
    """Where to send the browser, and the sealed flow to keep for the callback."""

    url: str
    flow: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Callback:
    """What the IdP's redirect brought (query parameters) and the flow cookie."""

    flow: str | None = field(repr=False)
    state: str | None
    code: str | None = field(repr=False)
    error: str | None = None
    iss: str | None = None


def sso_caller(name: str, roles: frozenset[str], apps: frozenset[str] | None) -> Caller:
    """The operator an SSO session stands for, shaped like a caller so every authorization
    check works unchanged. Its id is negative (no stored caller has one) and stable per
    name, so the per-caller rate limit keeps one bucket per person."""
    digest = hashlib.sha256(name.encode()).digest()
    return Caller(-1 - int.from_bytes(digest[:6], "big"), name, roles, apps, None)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SsoLogin:
    def __init__(
        self,
        *,
        provider: IdentityProvider,
        keyring: Keyring,
        coordinator: Coordinator,
        audit: AuditSink,
        grants: Mapping[str, GroupGrant],
    ) -> None:
        self._provider = provider
        self._keyring = keyring
        self._coordinator = coordinator
        self._audit = audit
        self._grants = dict(grants)
        self._starts = Budget(START_RATE)

    async def begin(self, redirect_uri: str) -> SsoStart:
        self._starts.spend(
            time.monotonic(),
            "too many sign-ins are starting on this replica; try again shortly",
            code="sso_throttled",
            counted=metrics.SSO_LOGINS.labels(metrics.SsoOutcome.THROTTLED),
        )
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        url = await self._provider.authorization_url(
            redirect_uri=redirect_uri, state=state, nonce=nonce, code_challenge=challenge
        )
        flow = await self._keyring.seal(
            Purpose.SESSION,
            _LABEL,
            {
                "state": state,
                "nonce": nonce,
                "verifier": verifier,
                "redirect_uri": redirect_uri,
                "expires": int(time.time()) + FLOW_SECONDS,
            },
        )
        return SsoStart(url, flow)

    async def finish(self, callback: Callback) -> Caller:
        """The operator the IdP vouched for, with roles from the mapping; raises
        :class:`SsoFailed`, :class:`SsoNoRole` or :class:`IdentityProviderUnavailable`."""
        try:
            caller = await self._finish(callback)
        except SsoNoRole:
            metrics.SSO_LOGINS.labels(metrics.SsoOutcome.NO_ROLE).inc()
            raise
        except IdentityProviderUnavailable:
            metrics.SSO_LOGINS.labels(metrics.SsoOutcome.PROVIDER_UNAVAILABLE).inc()
            raise
        except BrokerError:
            metrics.SSO_LOGINS.labels(metrics.SsoOutcome.REFUSED).inc()
            raise
        metrics.SSO_LOGINS.labels(metrics.SsoOutcome.OK).inc()
        return caller

    async def _finish(self, callback: Callback) -> Caller:
        flow = await self._open(callback)
        if callback.iss is not None and callback.iss != self._provider.issuer:
            raise SsoFailed(
                "the answer came from another identity provider", code="sso_state_invalid"
            )
        if callback.error is not None:
            raise SsoFailed(
                "the identity provider did not sign you in; try again or ask its administrator",
                code="sso_denied",
            )
        if not callback.code:
            raise SsoFailed("the identity provider sent no code", code="sso_state_invalid")
        # Redis down (None): the IdP's single-use code still stops a replay.
        if (
            await self._coordinator.try_lock(f"oidc-flow:{flow['state']}", "used", FLOW_SECONDS)
            is False
        ):
            raise SsoFailed("this sign-in was already used: sign in again", code="sso_state_used")
        identity = await self._provider.sign_in(
            callback.code,
            redirect_uri=flow["redirect_uri"],
            verifier=flow["verifier"],
            nonce=flow["nonce"],
        )
        return self._operator(identity)

    async def _open(self, callback: Callback) -> dict[str, str]:
        opened = (
            await self._keyring.open(Purpose.SESSION, _LABEL, callback.flow)
            if callback.flow and len(callback.flow) < 2000
            else None
        )
        if not isinstance(opened, dict) or set(opened) != _FIELDS:
            raise SsoFailed(
                "this sign-in was not started in this browser or has expired: sign in again",
                code="sso_state_invalid",
            )
        if not isinstance(opened["expires"], int) or opened["expires"] <= time.time():
            raise SsoFailed("this sign-in took too long: sign in again", code="sso_state_invalid")
        state = callback.state or ""
        if not hmac.compare_digest(state.encode(), str(opened["state"]).encode()):
            raise SsoFailed(
                "the answer belongs to another sign-in than this browser's: sign in again",
                code="sso_state_invalid",
            )
        return {k: str(v) for k, v in opened.items()}

    def _operator(self, identity: SsoIdentity) -> Caller:
        name = f"oidc:{identity.email or identity.subject}"
        matched = [self._grants[g] for g in sorted(identity.groups) if g in self._grants]
        roles = frozenset(role for grant in matched for role in grant.roles)
        # The apps the page may act on come from the groups that grant portals:admin only:
        # another group (unlimited, or limited elsewhere) must not widen that grant.
        admin = [grant for grant in matched if Role.PORTALS_ADMIN.value in grant.roles]
        apps: frozenset[str] | None = None
        if admin and all(grant.apps is not None for grant in admin):
            apps = frozenset(app for grant in admin for app in grant.apps or ())
        if Role.PORTALS_ADMIN.value not in roles:
            self._audit.record(
                "admin.sso_refused",
                actor=name,
                subject=identity.subject,
                groups=sorted(identity.groups)[:50],
            )
            raise SsoNoRole(
                f"{name} signed in, but none of their groups grants the portals:admin role "
                "(BROKER_OIDC_ROLES): ask for membership of a mapped group"
            )
        self._audit.record(
            "admin.sso_login", actor=name, subject=identity.subject, roles=sorted(roles)
        )
        return sso_caller(name, roles, apps)
