"""Private apps (issue 16, part 3): HubSpot's private-app access tokens, held in Vault and
served by Hub ID through the same token route (and so the gateway) as OAuth tokens.

A private-app token is static: HubSpot never expires it by itself, the broker never
refreshes it (its portal row has no refresh token and no schedule, so no claim finds it).
An operator rotates it in HubSpot's UI, which keeps the previous token valid for a while,
and hands the new one to :meth:`PrivateApps.rotate`: stored in Vault first, then recorded,
then every replica drops the cached one (pub/sub, the Postgres poll as backstop), so callers
get the old or the new token during the rotation and the new one after it, never an error.

Removal is the portal's revocation (:meth:`~broker.core.operations.PortalOperations.revoke`):
HubSpot has no API to revoke a private-app token, so the broker stops serving it on every
replica and destroys it in Vault (durably: retried in the background while Vault is down);
killing it at HubSpot is a rotation in HubSpot's UI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from broker.config import Secret
from broker.core.invalidation import Invalidations
from broker.core.models import APP_SLUG, PortalKey, PortalRecord
from broker.core.operations import PortalOperations, Revocation
from broker.core.ports import (
    AppRepository,
    AuditSink,
    PortalRepository,
    PrivatePortals,
    PrivateTokenStore,
)
from broker.core.signing import Keyring
from broker.errors import AppKindMismatch, BrokerError, InvalidRequest, NotFound

log = structlog.get_logger(__name__)

#: HubSpot's are ``pat-<region>-<uuid>``; anything printable without blanks is taken.
TOKEN_MAX = 4096
#: Longest overlap of a rotated-away token an operator can record (HubSpot offers days).
OLD_EXPIRES_MAX = 90 * 86_400


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class PrivateApps:
    portals: PortalRepository
    apps: AppRepository
    private: PrivatePortals
    store: PrivateTokenStore
    keyring: Keyring
    invalidations: Invalidations
    operations: PortalOperations
    audit: AuditSink

    async def add(
        self, slug: str, hub_id: int, token: Secret, *, scopes: Sequence[str], actor: str
    ) -> PortalRecord:
        """Register the private app of ``hub_id`` (if new) and store its token: the portal
        serves it at once (a re-add replaces the token and lifts a revocation)."""
        key = _key(slug, hub_id)
        _check_token(token)
        existing = await self.apps.get_app(slug)
        if existing is not None and existing.private_hub_id != hub_id:
            raise _not_this_private_app(slug, hub_id)
        # Vault first: nothing is recorded when Vault refuses (a policy without KV writes),
        # and a portal row never points at a token that is not there.
        await self.store.put_private_app_token(key, token)
        if await self.private.save_private_app(slug, hub_id) is None:  # registered meanwhile
            # Not this hub's private app: nothing serves that path, and the token written
            # there must not stay in Vault. The answer is the conflict either way.
            try:
                await self.store.delete_private_app_token(key)
            except BrokerError as exc:
                log.warning("private_app.add_cleanup_failed", portal=str(key), code=exc.code)
            raise _not_this_private_app(slug, hub_id)
        record = await self.private.put_private_portal(
            key, scopes=scopes, fingerprint=await self._print(token), actor=actor
        )
        await self.invalidations.publish(key)
        self.audit.record("portal.private_app_added", actor=actor, key=key)
        log.info("private_app.added", portal=str(key))
        return record

    async def rotate(
        self, slug: str, hub_id: int, token: Secret, *, old_expires_in: int | None, actor: str
    ) -> PortalRecord:
        """Serve ``token`` from now on; ``old_expires_in``: seconds HubSpot keeps accepting
        the previous one (recorded for operators; callers holding it keep using it)."""
        key = _key(slug, hub_id)
        _check_token(token)
        if old_expires_in is not None and not 0 <= old_expires_in <= OLD_EXPIRES_MAX:
            raise InvalidRequest(
                "old_expires_in is out of range",
                errors=[{"field": "old_expires_in", "message": f"0 to {OLD_EXPIRES_MAX}"}],
            )
        await self._servable(key)
        await self.store.put_private_app_token(key, token)
        record = await self.private.rotate_private_portal(
            key, fingerprint=await self._print(token), old_expires_in=old_expires_in
        )
        if record is None:  # revoked meanwhile: what was written is not served
            await self.store.delete_private_app_token(key)
            raise NotFound(f"no private-app portal {key}", code="portal_not_found")
        await self.invalidations.publish(key)
        self.audit.record(
            "portal.private_app_rotated", actor=actor, key=key, old_expires_in=old_expires_in
        )
        log.info("private_app.rotated", portal=str(key), old_expires_in=old_expires_in)
        return record

    async def remove(self, slug: str, hub_id: int, *, reason: str, actor: str) -> Revocation:
        """Stop serving the token on every replica and destroy it in Vault (a revocation)."""
        key = _key(slug, hub_id)
        await self._servable(key, revoked_too=True)
        return await self.operations.revoke(key, reason=reason, actor=actor)

    async def _servable(self, key: PortalKey, *, revoked_too: bool = False) -> None:
        record = await self.portals.get_portal(key)
        if record is None or (record.revoked_at is not None and not revoked_too):
            raise NotFound(f"no private-app portal {key}", code="portal_not_found")
        if not record.private:
            raise AppKindMismatch(f"portal {key} is an OAuth grant, not a private app's")

    async def _print(self, token: Secret) -> str | None:
        """The audit fingerprint, stored with the row; None when Vault cannot make it now
        (a cache fill makes it then)."""
        try:
            return await self.keyring.fingerprint(token.get())
        except BrokerError:
            return None


def _not_this_private_app(slug: str, hub_id: int) -> AppKindMismatch:
    return AppKindMismatch(f"app {slug!r} exists and is not hub {hub_id}'s private app")


def _key(slug: str, hub_id: int) -> PortalKey:
    if not APP_SLUG.match(slug):
        raise InvalidRequest(
            "the app is not valid",
            errors=[{"field": "slug", "message": "1-63 lowercase letters, digits, '-'"}],
        )
    if not 0 < hub_id < 2**63:
        raise InvalidRequest(
            "the hub is not valid", errors=[{"field": "hub_id", "message": "a positive integer"}]
        )
    return PortalKey(slug, hub_id)


def _check_token(token: Secret) -> None:
    """Never echoes the value (it is a secret), only what is wrong with it."""
    value = token.get()
    if not value or len(value) > TOKEN_MAX or not value.isprintable() or " " in value:
        raise InvalidRequest(
            "the private-app token is not valid",
            errors=[
                {
                    "field": "access_token",
                    "message": f"1 to {TOKEN_MAX} printable characters, no blanks",
                }
            ],
        )
