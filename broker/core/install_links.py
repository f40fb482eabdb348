"""Operator-signed install links (DESIGN.md, "Security: Install flow").

``/oauth/install`` needs no login, so by default it only starts a flow for a link an operator
minted: ``/oauth/install?app=SLUG&link=TOKEN``. The token is compact and stateless::

    base64url(JSON payload) "." base64url(HMAC-SHA256(link key, base64url(JSON payload)))

with the payload ``{"app", "exp"[, "return_to"][, "hub_id"]}`` (``exp`` in unix seconds,
``hub_id`` for a re-install link of one portal). Security properties:

- The link key is derived from the per-deployment key in Vault with its own label, so it
  never signs or verifies anything else (fingerprints, admin sessions, CSRF).
- The signature is checked in constant time, before the payload is even parsed.
- A link names one app and expires (``BROKER_INSTALL_LINK_TTL``, at most 30 days); its
  ``return_to`` passes the same ``BROKER_RETURN_TO_ORIGINS`` check as a bare one, when minted
  and again when used.
- Minting is audited (``install_link.created``: actor, app, expiry); the token never is.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from broker.config import MAX_INSTALL_LINK_TTL, Settings
from broker.core.models import PortalKey
from broker.core.ports import AuditSink
from broker.core.refresh import RefreshEngine
from broker.errors import InstallLinkRejected, InvalidRequest

_LABEL = b"hubspot-token-broker/install-link/v1"
_MAX_TOKEN = 2048  # characters; a real link is a few hundred


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def origin_allowed(url: str, settings: Settings) -> bool:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return origin in settings.return_to_origin_list


def check_return_to(return_to: str | None, settings: Settings) -> None:
    """Only configured origins: the broker is never an open redirect."""
    if return_to is not None and not origin_allowed(return_to, settings):
        raise InvalidRequest(
            "return_to must be on an origin listed in BROKER_RETURN_TO_ORIGINS",
            errors=[{"field": "return_to", "message": "origin not allowed"}],
        )


@dataclass(frozen=True, slots=True)
class LinkClaims:
    app: str
    exp: int
    return_to: str | None = None
    hub_id: int | None = None

    def payload(self) -> dict[str, object]:
        data: dict[str, object] = {"app": self.app, "exp": self.exp}
        if self.return_to is not None:
            data["return_to"] = self.return_to
        if self.hub_id is not None:
            data["hub_id"] = self.hub_id
        return data


class LinkSigner:
    """Signs and verifies link tokens; pure (no I/O), the clock injectable for tests."""

    def __init__(self, deployment_key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.digest(deployment_key, _LABEL, "sha256")
        self._clock = clock

    def sign(self, claims: LinkClaims) -> str:
        body = _b64(json.dumps(claims.payload(), separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(hmac.digest(self._key, body.encode(), 'sha256'))}"

    def verify(self, token: str, *, app: str) -> LinkClaims:
        """The claims of a genuine, unexpired link for ``app``; else :class:`InstallLinkRejected`
        (``install_link_invalid`` or ``install_link_expired``)."""
        invalid = InstallLinkRejected(
            "this install link is not valid; ask an operator for a new one",
            code="install_link_invalid",
        )
        body, dot, signature = token.partition(".")
        if not dot or not body or len(token) > _MAX_TOKEN:
            raise invalid
        try:
            presented = _unb64(signature)
        except (binascii.Error, ValueError):
            raise invalid from None
        expected = hmac.digest(self._key, body.encode(), "sha256")
        if not hmac.compare_digest(presented, expected):
            raise invalid
        try:
            data = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            raise invalid from None
        claims = _claims(data)
        if claims is None or claims.app != app:
            raise invalid
        if claims.exp <= self._clock():
            raise InstallLinkRejected(
                "this install link has expired; ask an operator for a new one",
                code="install_link_expired",
            )
        return claims


def _claims(data: object) -> LinkClaims | None:
    if not isinstance(data, dict) or not {"app", "exp"} <= set(data):
        return None
    if set(data) - {"app", "exp", "return_to", "hub_id"}:
        return None
    app, exp = data["app"], data["exp"]
    return_to, hub_id = data.get("return_to"), data.get("hub_id")
    if not isinstance(app, str) or type(exp) is not int:
        return None
    if return_to is not None and not isinstance(return_to, str):
        return None
    if hub_id is not None and type(hub_id) is not int:
        return None
    return LinkClaims(app, exp, return_to, hub_id)


@dataclass(frozen=True, slots=True)
class InstallLink:
    url: str = field(repr=False)  # carries the token
    expires_at: datetime


class InstallLinks:
    """Mints install links for operators (CLI, admin API); every one is audited."""

    def __init__(
        self, settings: Settings, *, signer: LinkSigner, engine: RefreshEngine, audit: AuditSink
    ) -> None:
        self._settings = settings
        self.signer = signer
        self._engine = engine
        self._audit = audit

    async def mint(
        self,
        app_slug: str,
        *,
        actor: str,
        ttl: int | None = None,
        return_to: str | None = None,
        hub_id: int | None = None,
    ) -> InstallLink:
        seconds = self._settings.install_link_ttl if ttl is None else ttl
        if not 0 < seconds <= MAX_INSTALL_LINK_TTL:
            raise InvalidRequest(
                f"ttl must be 1-{MAX_INSTALL_LINK_TTL} seconds",
                errors=[{"field": "ttl", "message": f"1-{MAX_INSTALL_LINK_TTL}"}],
            )
        check_return_to(return_to, self._settings)
        app = await self._engine.app(app_slug)  # app_not_found for an unknown one
        exp = int(time.time()) + seconds
        token = self.signer.sign(LinkClaims(app.slug, exp, return_to, hub_id))
        # Where browsers reach this broker: the origin of the app's registered callback.
        origin = urlsplit(app.redirect_uri)
        query = urlencode({"app": app.slug, "link": token})
        expires_at = datetime.fromtimestamp(exp, UTC)
        self._audit.record(
            "install_link.created",
            actor=actor,
            key=None if hub_id is None else PortalKey(app.slug, hub_id),
            app=app.slug,
            expires_at=expires_at.isoformat(),
            return_to=return_to,
        )
        return InstallLink(f"{origin.scheme}://{origin.netloc}/oauth/install?{query}", expires_at)
