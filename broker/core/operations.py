"""Operator actions on portals: revoke, quarantine and release, force a refresh, a fresh
install link. Every action is audited; none ever returns or logs a token.

Revoke (DESIGN.md, "Operators"): the local revocation commits first — state ``revoked``,
ciphertexts shredded, an outbox event — and every replica is told to drop its cached token
(Redis pub/sub, with the Postgres poll as the fallback). Then HubSpot is asked to revoke the
refresh token; if it cannot be reached, ``pending_revocations`` keeps the ciphertext and
:class:`RevocationRetrier` retries until HubSpot confirms. Revoking twice is harmless.

A private app's portal (``broker.core.private_apps``) has no refresh token and HubSpot no API
to revoke its token: revoking it stops serving it on every replica and destroys it in Vault
(upstream ``not_applicable``; killing it at HubSpot is a rotation in HubSpot's UI). The
destroy is owed durably like an upstream revoke: the revocation's commit queues it in
``pending_revocations`` (a row without a refresh token); when Vault is down the answer is
``pending`` and the retrier destroys it once Vault is back, unless the app was added again
meanwhile (then the re-add dropped the row, or the retrier finds the portal serving).
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.apps import AppCatalog
from broker.core.install_links import InstallLink, InstallLinks
from broker.core.invalidation import Invalidations
from broker.core.models import PortalKey, PortalRecord, PortalState
from broker.core.ports import (
    AuditSink,
    Cipher,
    LeaseRepository,
    OAuthProvider,
    PendingRevocation,
    PortalRepository,
    PrivateTokenStore,
    RevocationQueue,
    SecretStore,
)
from broker.core.refresh import RefreshEngine
from broker.core.refresh_policy import raise_for_state
from broker.core.tasks import JITTER, BackgroundLoop
from broker.errors import AppKindMismatch, BrokerError, Conflict, NotFound, UpstreamError

log = structlog.get_logger(__name__)

_FORCE_REFRESH_SPACING = 10.0  # seconds between forced refreshes of one portal


@dataclass(frozen=True, slots=True)
class Revocation:
    record: PortalRecord
    #: "revoked" (HubSpot confirmed), "pending" (retried in the background), or
    #: "already_revoked".
    upstream: str


class PortalOperations:
    def __init__(
        self,
        settings: Settings,
        *,
        portals: PortalRepository,
        leases: LeaseRepository,
        revocations: RevocationQueue,
        apps: AppCatalog,
        engine: RefreshEngine,
        cipher: Cipher,
        secrets_store: SecretStore,
        oauth: OAuthProvider,
        invalidations: Invalidations,
        audit: AuditSink,
        links: InstallLinks,
        private_tokens: PrivateTokenStore,
    ) -> None:
        self._settings = settings
        self._private_tokens = private_tokens
        self._links = links
        self._portals = portals
        self._leases = leases
        self._revocations = revocations
        self._apps = apps
        self._engine = engine
        self._cipher = cipher
        self._secrets = secrets_store
        self._oauth = oauth
        self._invalidations = invalidations
        self._audit = audit

    async def revoke(self, key: PortalKey, *, reason: str, actor: str) -> Revocation:
        outcome = await self._portals.revoke(key, reason=reason, actor=actor)
        if outcome is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        record = outcome.record
        await self._invalidations.publish(key)
        self._audit.record("portal.revoked", actor=actor, key=key, reason=reason)
        if outcome.pending is None:
            return Revocation(record, "already_revoked")
        try:
            await self._attempt(outcome.pending)
        except UpstreamError as exc:
            log.warning("revoke.upstream_pending", portal=str(key), code=exc.code)
            return Revocation(record, "pending")
        return Revocation(record, "not_applicable" if record.private else "revoked")

    async def _attempt(self, pending: PendingRevocation) -> None:
        key = pending.key
        try:
            if pending.refresh_ct is None:
                await self._destroy_private(key)
            else:
                app = await self._apps.get(key.app)
                (refresh_token,) = await self._cipher.decrypt(
                    [(pending.refresh_ct, key.context("refresh"))]
                )
                await self._oauth.revoke(
                    app, await self._secrets.client_secrets(key.app), refresh_token
                )
        except BrokerError as exc:  # HubSpot or a backend down, or an undecryptable token
            retry_in = min(300.0, JITTER.uniform(1.0, 2.0 ** min(pending.attempts + 1, 9)))
            await self._revocations.revocation_failed(pending.id, exc.code, retry_in)
            metrics.UPSTREAM_REVOKES.labels(metrics.RevokeResult.RETRY).inc()
            raise
        await self._revocations.revocation_done(pending.id)
        metrics.UPSTREAM_REVOKES.labels(metrics.RevokeResult.REVOKED).inc()
        log.info("revoke.upstream_done", portal=str(key))

    async def _destroy_private(self, key: PortalKey) -> None:
        """Destroy a revoked private app's token in Vault, unless it was added again since
        (then the token there is the new one, served)."""
        record = await self._portals.get_portal(key)
        if record is not None and record.revoked_at is None:
            log.info("revoke.private_app_readded", portal=str(key))
            return
        await self._private_tokens.delete_private_app_token(key)
        log.info("revoke.private_app_destroyed", portal=str(key))

    async def retry_due(self, limit: int = 50) -> int:
        done = 0
        for pending in await self._revocations.due_revocations(limit):
            with contextlib.suppress(BrokerError):
                await self._attempt(pending)
                done += 1
        return done

    async def quarantine(self, key: PortalKey, *, actor: str, reason: str) -> PortalRecord:
        record = await self._portals.set_state(
            key,
            PortalState.QUARANTINED,
            allowed_from=(PortalState.ACTIVE, PortalState.REFRESH_FAILING, PortalState.QUARANTINED),
        )
        if record is None:
            raise await self._state_conflict(key, "quarantine")
        await self._invalidations.publish(key)
        self._audit.record("portal.quarantined", actor=actor, key=key, reason=reason)
        return record

    async def release(self, key: PortalKey, *, actor: str) -> PortalRecord:
        record = await self._portals.set_state(
            key, PortalState.ACTIVE, allowed_from=(PortalState.QUARANTINED, PortalState.ACTIVE)
        )
        if record is None:
            raise await self._state_conflict(key, "release")
        self._audit.record("portal.released", actor=actor, key=key)
        return record

    async def force_refresh(self, key: PortalKey, *, actor: str) -> PortalRecord:
        record = await self._portals.get_portal(key)
        if record is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        raise_for_state(record)
        if record.private:
            raise AppKindMismatch(f"portal {key} is a private app's: its token never refreshes")
        if (
            record.refreshed_at is not None
            and (record.db_now - record.refreshed_at).total_seconds() < _FORCE_REFRESH_SPACING
        ):
            raise Conflict(
                f"portal {key} was refreshed less than {_FORCE_REFRESH_SPACING:g} s ago",
                code="refreshed_recently",
            )
        lease = await self._leases.claim_lease(
            record.id,
            f"operator:{secrets.token_hex(8)}",
            lease_seconds=self._settings.lease_seconds,
            min_ttl=10**9,  # more life than any token has: due now, whatever it has left
            ignore_backoff=True,
        )
        if lease is None:
            raise Conflict(f"portal {key} is being refreshed right now", code="refresh_in_progress")
        fresh = await self._engine.refresh_with_lease(key, lease, interactive=True)
        await self._invalidations.publish(key)  # replicas pick up the new token
        self._audit.record("portal.force_refreshed", actor=actor, key=key)
        return fresh.record

    async def install_link(
        self, key: PortalKey, *, actor: str, ttl: int | None = None
    ) -> InstallLink:
        """A signed link to send to the portal's admin: a fresh install flow in their browser
        (``hub_id`` in the link's payload). Audited as ``install_link.created``."""
        await self._apps.get(key.app)
        if await self._portals.get_portal(key) is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        return await self._links.mint(key.app, actor=actor, ttl=ttl, hub_id=key.hub_id)

    async def _state_conflict(self, key: PortalKey, action: str) -> BrokerError:
        record = await self._portals.get_portal(key)
        if record is None:
            return NotFound(f"no portal {key}", code="portal_not_found")
        return Conflict(
            f"cannot {action} portal {key} while it is {record.state.value}",
            code="invalid_state",
        )


class RevocationRetrier:
    """Background loop: retries owed upstream revocations until HubSpot confirms."""

    def __init__(self, operations: PortalOperations, *, interval: float = 5.0) -> None:
        self._loop = BackgroundLoop(
            metrics.Background.REVOCATIONS, operations.retry_due, interval=interval
        )

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
