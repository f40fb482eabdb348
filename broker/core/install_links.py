"""Operator-signed install links (DESIGN.md, "Security: Install flow").

``/oauth/install`` needs no login, so by default it only starts a flow for a link an operator
minted: ``/oauth/install?app=SLUG&link=TOKEN``. The token is compact::

    base64url(JSON payload) "." MAC        MAC = "v" key-version "." base64url(HMAC)

with the payload ``{"id", "app", "iat", "exp"[, "return_to"][, "hub_id"]}`` (``iat``/``exp``
in unix seconds, ``hub_id`` for a re-install link of one portal). Security properties:

- The MAC is made by the install-link signing key (:mod:`broker.core.signing`), a Vault
  Transit key no one can read: operators mint links through Vault without ever holding it,
  and it signs nothing else. Rotating it keeps older links working until the overlap ends.
- A link names one app and expires (``BROKER_INSTALL_LINK_TTL``, at most 30 days): a
  genuine link whose ``exp`` lies more than 30 days after its ``iat`` or after now is
  refused, whoever signed it. Its ``return_to`` passes the same
  ``BROKER_RETURN_TO_ORIGINS`` check as a bare one, when minted and again when used.
- Every link is stored by its ``id`` (never the token): listed, revoked (a revoked link is
  ``install_link_revoked``), and one with no stored row is not a link at all.
- Minting and revoking are audited (``install_link.created``/``.revoked``: actor, id, app,
  expiry); the token never is.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from broker.config import MAX_INSTALL_LINK_TTL, Settings
from broker.core.apps import AppCatalog
from broker.core.install_state import destination_ok
from broker.core.models import InstallLinkRecord, PortalKey
from broker.core.ports import AuditSink, InstallLinkStore
from broker.core.signing import Keyring, Purpose
from broker.errors import InstallLinkRejected, InvalidRequest, NotFound

_LABEL = "install-link/v2"
_MAX_TOKEN = 2048  # characters; a real link is a few hundred
_SKEW = 300  # seconds an ``iat`` may lie ahead of this replica's clock
_FIELDS = frozenset({"id", "app", "iat", "exp", "return_to", "hub_id"})


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
    id: str
    app: str
    iat: int
    exp: int
    return_to: str | None = None
    hub_id: int | None = None

    def payload(self) -> dict[str, object]:
        data: dict[str, object] = {"id": self.id, "app": self.app, "iat": self.iat, "exp": self.exp}
        if self.return_to is not None:
            data["return_to"] = self.return_to
        if self.hub_id is not None:
            data["hub_id"] = self.hub_id
        return data


class LinkSigner:
    """Signs and verifies link tokens with the install-link key (in Vault); the clock
    injectable for tests. Stateless: whether a link is stored and unrevoked is
    :meth:`InstallLinks.verify`'s business."""

    def __init__(self, keyring: Keyring, *, clock: Callable[[], float] = time.time) -> None:
        self._keyring = keyring
        self._clock = clock

    async def sign(self, claims: LinkClaims) -> str:
        return await self._keyring.seal(Purpose.INSTALL_LINK, _LABEL, claims.payload())

    async def verify(self, token: str, *, app: str) -> LinkClaims:
        """The claims of a genuine, unexpired link for ``app`` whose lifetime is within
        :data:`MAX_INSTALL_LINK_TTL`; else :class:`InstallLinkRejected`
        (``install_link_invalid`` or ``install_link_expired``)."""
        invalid = InstallLinkRejected(
            "this install link is not valid; ask an operator for a new one",
            code="install_link_invalid",
        )
        if len(token) > _MAX_TOKEN:
            raise invalid
        data = await self._keyring.open(Purpose.INSTALL_LINK, _LABEL, token)
        claims = None if data is None else _claims(data)
        if claims is None or claims.app != app:
            raise invalid
        now = self._clock()
        if claims.exp <= now:
            raise InstallLinkRejected(
                "this install link has expired; ask an operator for a new one",
                code="install_link_expired",
            )
        # Whoever signed it (an old key, a script calling Vault): no link outlives the cap.
        too_long = max(claims.exp - claims.iat, claims.exp - now) > MAX_INSTALL_LINK_TTL
        if too_long or claims.iat > now + _SKEW:
            raise invalid
        return claims


def _claims(data: object) -> LinkClaims | None:
    if not isinstance(data, dict) or not {"id", "app", "iat", "exp"} <= set(data):
        return None
    if set(data) - _FIELDS:
        return None
    link_id, app, iat, exp = data["id"], data["app"], data["iat"], data["exp"]
    return_to, hub_id = data.get("return_to"), data.get("hub_id")
    if not isinstance(link_id, str) or not isinstance(app, str):
        return None
    if type(iat) is not int or type(exp) is not int:
        return None
    if not destination_ok(return_to, hub_id):
        return None
    return LinkClaims(link_id, app, iat, exp, return_to, hub_id)


@dataclass(frozen=True, slots=True)
class InstallLink:
    url: str = field(repr=False)  # carries the token
    expires_at: datetime
    id: str

    def view(self) -> dict[str, str]:
        """The link as the admin API and the CLI show it once (the URL carries the token)."""
        return {"url": self.url, "expires_at": self.expires_at.isoformat(), "id": self.id}


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class InstallLinks:
    """Mints, verifies, lists and revokes install links for operators (CLI, admin API);
    minting and revoking are audited with the operator's name."""

    settings: Settings
    _: KW_ONLY
    signer: LinkSigner
    store: InstallLinkStore
    apps: AppCatalog
    audit: AuditSink

    async def mint(
        self,
        app_slug: str,
        *,
        actor: str,
        ttl: int | None = None,
        return_to: str | None = None,
        hub_id: int | None = None,
    ) -> InstallLink:
        seconds = self.settings.install_link_ttl if ttl is None else ttl
        if not 0 < seconds <= MAX_INSTALL_LINK_TTL:
            raise InvalidRequest(
                f"ttl must be 1-{MAX_INSTALL_LINK_TTL} seconds",
                errors=[{"field": "ttl", "message": f"1-{MAX_INSTALL_LINK_TTL}"}],
            )
        check_return_to(return_to, self.settings)
        # app_not_found for an unknown one, app_retired for a retired one.
        app = await self.apps.get(app_slug, installable=True)
        now = int(time.time())
        claims = LinkClaims(
            f"il_{secrets.token_urlsafe(12)}", app.slug, now, now + seconds, return_to, hub_id
        )
        token = await self.signer.sign(claims)
        expires_at = datetime.fromtimestamp(claims.exp, UTC)
        await self.store.add(
            InstallLinkRecord(
                claims.id,
                app.slug,
                hub_id,
                return_to,
                datetime.fromtimestamp(now, UTC),
                actor,
                expires_at,
            )
        )
        # Where browsers reach this broker: the origin of the app's registered callback.
        origin = urlsplit(app.redirect_uri)
        query = urlencode({"app": app.slug, "link": token})
        self.audit.record(
            "install_link.created",
            actor=actor,
            key=None if hub_id is None else PortalKey(app.slug, hub_id),
            app=app.slug,
            link_id=claims.id,
            expires_at=expires_at.isoformat(),
            return_to=return_to,
        )
        return InstallLink(
            f"{origin.scheme}://{origin.netloc}/oauth/install?{query}", expires_at, claims.id
        )

    async def verify(self, token: str, *, app: str) -> LinkClaims:
        """A genuine link (:meth:`LinkSigner.verify`) that is stored as minted and not
        revoked (``install_link_revoked``)."""
        claims = await self.signer.verify(token, app=app)
        record = await self.store.get(claims.id)
        if record is None or (record.app, record.hub_id, record.return_to) != (
            claims.app,
            claims.hub_id,
            claims.return_to,
        ):
            raise InstallLinkRejected(
                "this install link is not valid; ask an operator for a new one",
                code="install_link_invalid",
            )
        if record.revoked_at is not None:
            raise InstallLinkRejected(
                "this install link was revoked; ask an operator for a new one",
                code="install_link_revoked",
            )
        return claims

    async def list_links(
        self, *, app: str | None = None, include_inactive: bool = False
    ) -> list[InstallLinkRecord]:
        return await self.store.find(app=app, include_inactive=include_inactive)

    async def get(self, link_id: str) -> InstallLinkRecord:
        record = await self.store.get(link_id)
        if record is None:
            raise NotFound(f"no install link {link_id!r}", code="install_link_not_found")
        return record

    async def revoke(self, link_id: str, *, actor: str) -> InstallLinkRecord:
        """Revoke a link at once, on every replica (each use reads its row). Audited."""
        record = await self.store.revoke(link_id, actor=actor)
        if record is None:
            raise NotFound(f"no install link {link_id!r}", code="install_link_not_found")
        self.audit.record(
            "install_link.revoked",
            actor=actor,
            key=None if record.hub_id is None else PortalKey(record.app, record.hub_id),
            app=record.app,
            link_id=record.id,
        )
        return record
