"""The refresh protocol (DESIGN.md, "Refreshing"): one upstream call per expiry, across all
replicas, and never a lost refresh token.

1. Redis fast path: ``SET NX PX`` with a random owner. Held elsewhere → wait for the
   "refreshed" notice or poll the row. Redis down → straight to step 2.
2. Postgres lease, taken on the database clock with a new epoch. Not granted → re-read.
3. Self-fence: no HubSpot call unless the remaining lease covers it.
4. Intent ("a call is being sent", under the lease): none while another call from this
   version is unanswered (its outcome unknown: the portal waits), and an answer journaled
   but never applied is adopted instead → HubSpot → journal the response (the intent goes)
   → fenced write (epoch and owner must match) → publish "refreshed" → release the Redis
   lock. Fenced out: the response is applied anyway while the row is still at the version
   the call started from (nobody stored a newer token), else the journal keeps it.
5. ``invalid_grant``: a newer unapplied journal entry is adopted; if the version moved on,
   someone else refreshed; otherwise, after a grace re-check, the portal needs re-auth. A
   sweep heals ``needs_reauth`` portals from a response journaled after all.

Rules free of I/O: :mod:`~broker.core.refresh_policy`; endings other than the holder's
commit: :mod:`~broker.core.refresh_outcomes`."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import structlog

from broker import metrics
from broker.config import Secret, Settings
from broker.core.apps import AppCatalog
from broker.core.grants import encrypt_grant
from broker.core.models import App, Lease, PortalKey, PortalRecord, TokenGrant
from broker.core.ports import (
    AuditSink,
    Cipher,
    Coordinator,
    LeaseRepository,
    OAuthProvider,
    PortalRepository,
    RateLimiter,
    SecretStore,
)
from broker.core.refresh_outcomes import Outcomes
from broker.core.refresh_policy import (
    JOURNAL_GRACE_LEASES,
    USEFUL_SECONDS,
    Checkpoint,
    CircuitBreaker,
    Fresh,
    no_checkpoint,
    raise_for_state,
    schedule,
    while_backing_off,
)
from broker.core.signing import Keyring
from broker.core.tasks import finish_even_if_cancelled
from broker.errors import (
    AppMisconfigured,
    DatabaseError,
    GrantDead,
    HubSpotError,
    LockUnavailable,
    NotFound,
    Undecryptable,
    UpstreamError,
    VaultError,
)
from broker.metrics import Failure, Outcome

log = structlog.get_logger(__name__)


class RefreshEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        portals: PortalRepository,
        leases: LeaseRepository,
        apps: AppCatalog,
        coordinator: Coordinator,
        cipher: Cipher,
        secrets_store: SecretStore,
        oauth: OAuthProvider,
        limiter: RateLimiter,
        audit: AuditSink,
        replica_id: str,
        keyring: Keyring | None = None,
        checkpoint: Checkpoint | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``keyring`` fingerprints each new token (none: cache fills do). ``checkpoint`` is
        awaited at each protocol step (``after_claim``, ``after_hubspot``, ``after_journal``):
        fault tests kill or pause the process there (:mod:`broker.dev.faults`), the
        state-machine test interleaves replicas there. ``clock`` and ``sleep`` time the
        protocol's own waits. Production passes none but the keyring."""
        self._settings = settings
        self._checkpoint = checkpoint or no_checkpoint
        self._clock = clock
        self._sleep = sleep
        self._portals = portals
        self._leases = leases
        self._apps = apps
        self._coordinator = coordinator
        self._cipher = cipher
        self._secrets = secrets_store
        self._oauth = oauth
        self._limiter = limiter
        self._audit = audit
        self._breaker = CircuitBreaker()
        self._replica = replica_id
        self._keyring = keyring
        self._outcomes = Outcomes(
            portals=portals,
            leases=leases,
            apps=apps,
            coordinator=coordinator,
            limiter=limiter,
            audit=audit,
            breaker=self._breaker,
            replica_id=replica_id,
            clock=clock,
            sleep=sleep,
        )

    async def heal_from_journal(self, limit: int = 100) -> int:
        """The healing sweep (:meth:`Outcomes.heal_from_journal`); returns how many healed."""
        return await self._outcomes.heal_from_journal(limit)

    def hubspot_paused_for(self) -> float:
        """Seconds the circuit breaker keeps HubSpot calls off (0 when closed)."""
        return self._breaker.open_for()

    async def ensure_fresh(self, record: PortalRecord, min_ttl: float) -> Fresh:
        """Return a row whose access token has at least ``min_ttl`` seconds left, refreshing
        through the protocol above. Raises the portal's state error, a HubSpot error class,
        or :class:`LockUnavailable` when another holder did not finish within one lease."""
        # Long enough to outlast one stalled holder's lease and take over from it.
        deadline = time.monotonic() + self._settings.lease_seconds * 1.5 + 1.0
        # Set once Redis said "held" but Postgres showed no lease: the Redis lock outlived
        # its holder (an unlock lost to a Redis failover or outage: the lock key replicated,
        # its release did not). It is advisory; Postgres decides from then on.
        redis_lock_stale = False
        while True:
            raise_for_state(record)
            if record.remaining() >= min_ttl:
                return Fresh(record)
            owner = f"{self._replica}:{secrets.token_hex(8)}"
            lock_name = f"portal:{record.id}"
            locked, notice = None, None
            if not redis_lock_stale:
                locked = await self._coordinator.try_lock(
                    lock_name, owner, self._settings.lease_seconds
                )
            if locked is not False:  # acquired, or Redis is down or stale: Postgres decides
                try:
                    lease = await self._leases.claim_lease(
                        record.id,
                        owner,
                        lease_seconds=self._settings.lease_seconds,
                        min_ttl=min_ttl,
                        ignore_backoff=False,
                    )
                    if lease is not None:
                        # The "refreshed" notice goes with the unlock (one round trip).
                        fresh = await self.refresh_with_lease(
                            record.key, lease, interactive=True, notify=not locked
                        )
                        notice = (record.id, fresh.record.version)
                        return fresh
                except UpstreamError:
                    if record.remaining() >= USEFUL_SECONDS:
                        return Fresh(record)  # refreshing failed; the old token is still valid
                    raise
                finally:
                    if locked:
                        await self._coordinator.unlock(lock_name, owner, refreshed=notice)
                record = await self._outcomes.reread(record.key)
                if record.remaining() >= min_ttl or not record.state.serves_tokens:
                    continue
                if not record.lease_held() and record.backoff_left() > 0:
                    return while_backing_off(record)
            held_at_version = record.version
            record = await self._wait_for_other(record, min_ttl, deadline)
            if (
                locked is False
                and record.version == held_at_version  # its holder refreshed nothing
                and not record.lease_held()
                and record.remaining() < min_ttl
            ):
                redis_lock_stale = True
                log.info("refresh.redis_lock_stale", portal=str(record.key))
            if time.monotonic() >= deadline and record.remaining() < min_ttl:
                if record.remaining() >= USEFUL_SECONDS:
                    return Fresh(record)  # still valid: serving it beats failing
                raise LockUnavailable(f"portal {record.key} is being refreshed elsewhere")

    async def _wait_for_other(
        self, record: PortalRecord, min_ttl: float, deadline: float
    ) -> PortalRecord:
        """Another process holds the refresh: wait for its notice, or poll the row."""
        started = time.monotonic()
        poll = 0.1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                metrics.LOCK_CONTENTION.inc()
                if record.remaining() >= USEFUL_SECONDS:
                    return record  # still valid: serving it beats failing
                raise LockUnavailable(f"portal {record.key} is being refreshed elsewhere")
            notified = await self._coordinator.wait_refreshed(record.id, min(0.5, remaining))
            if not notified:
                await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            current = await self._outcomes.reread(record.key)
            if (
                current.version != record.version
                or current.remaining() >= min_ttl
                or not current.state.serves_tokens
                or not current.lease_held()
            ):
                metrics.LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
                return current
            record = current

    async def refresh_with_lease(
        self, key: PortalKey, lease: Lease, *, interactive: bool = False, notify: bool = True
    ) -> Fresh:
        """Steps 3-5 of the protocol for a lease already granted. Releases the lease on any
        failure; a lease that runs out meanwhile is simply fenced at the write. ``notify``
        False: the caller publishes the "refreshed" notice of a commit (with its unlock)."""
        started = self._clock()
        # From the claim, not from now: a proactive lease may have waited for a slot and the
        # app's rate limit, and another replica may claim the portal once it runs out.
        lease_deadline = lease.granted_at + lease.seconds
        await self._checkpoint("after_claim")
        try:
            try:
                app = await self._apps.get(key.app)
                client_secrets = await self._secrets.client_secrets(key.app)
                (refresh_token,) = await self._cipher.decrypt(
                    [(lease.refresh_ct, key.context("refresh"))]
                )
                self._breaker.check()
                # The outcome-unknown record: from here on a call may be out.
                recorded = await self._leases.intend(lease, window=self._answer_window(lease))
            except (VaultError, DatabaseError, NotFound, Undecryptable) as exc:
                await self._outcomes.internal_failure(key, lease, exc)
                raise
            if recorded.answer_waiting:
                # An earlier holder journaled an answer it never applied (it died, stalled,
                # or its commit failed): with rotation it holds the only live refresh token.
                adopted = await self._outcomes.adopt(lease)
                if adopted is not None:
                    return adopted
                raise LockUnavailable(f"the journaled answer of portal {key} moved on")
            if recorded.lease_lost:
                metrics.refreshed(Outcome.FAILED, Failure.LOCK_CONTENTION)
                log.warning("refresh.lease_lost", portal=str(key))
                raise LockUnavailable("the lease ran out before HubSpot was called")
            if recorded.id is None:
                # An earlier call from this version is unanswered: it may have rotated the
                # token at HubSpot, and its holder may still journal the answer. A second
                # call now would be a duplicate, or meet invalid_grant: wait for it.
                return await self._outcomes.outcome_unknown(key, lease, recorded.unanswered_for)
            intent = recorded.id
            try:
                # Self-fence: HubSpot's timeout, the encrypt, the journal and the commit
                # must fit (the intent is written: HubSpot, Vault encrypt, 2 x DB are left).
                left = lease_deadline - self._clock()
                if left < self._settings.refresh_budget_seconds:
                    metrics.refreshed(Outcome.FAILED, Failure.LOCK_CONTENTION)
                    log.warning("refresh.lease_too_short", portal=str(key), left=round(left, 1))
                    raise LockUnavailable("lease too short to call HubSpot safely")
                if interactive:
                    await self._limiter.acquire(key.app, interactive=True)  # never waits
            except BaseException:
                await self._outcomes.forget_intent(intent)  # no call went out
                raise
            issued_at = lease.db_now + timedelta(seconds=self._clock() - started)
            try:
                grant = await self._refresh_upstream(app, client_secrets, refresh_token)
            except GrantDead as exc:
                self._breaker.succeeded()  # HubSpot answered: the host is fine
                await self._outcomes.forget_intent(intent)
                return await self._outcomes.grant_dead(key, lease, exc)
            except HubSpotError as exc:
                if not exc.outcome_unknown:  # it answered: no token was issued
                    await self._outcomes.forget_intent(intent)
                await self._outcomes.failed(key, lease, exc)
                raise
            self._breaker.succeeded()
            await self._checkpoint("after_hubspot")
            # The new refresh token exists only in this process until it is journaled:
            # a shutdown or a vanished caller must not cut storing it in half.
            fresh = await finish_even_if_cancelled(
                self._store(key, lease, grant, issued_at, lease_deadline, intent, notify)
            )
        except BaseException:
            await asyncio.shield(self._leases.release_lease(lease))
            raise
        metrics.REFRESH_SECONDS.observe(self._clock() - started)
        return fresh

    async def _refresh_upstream(
        self, app: App, client_secrets: list[Secret], refresh_token: str
    ) -> TokenGrant:
        """HubSpot refresh; when it rejects every cached client secret, re-read them from
        Vault once: an operator may have just rotated the secret (cache is minutes long)."""
        try:
            return await self._oauth.refresh(app, client_secrets, refresh_token)
        except AppMisconfigured:
            current = await self._secrets.client_secrets(app.slug, fresh=True)
            if current == client_secrets:
                raise
            return await self._oauth.refresh(app, current, refresh_token)

    async def _store(
        self,
        key: PortalKey,
        lease: Lease,
        grant: TokenGrant,
        issued_at: datetime,
        lease_deadline: float,
        intent: int,
        notify: bool,
    ) -> Fresh:
        """Encrypt, journal, commit. HubSpot has answered: the new refresh token exists only
        in memory until the journal row lands, so Vault or Postgres outages (a failover) are
        retried past the lease, for up to :data:`JOURNAL_GRACE_LEASES` more leases: the journal
        insert is not fenced, and a late row is adopted by the next holder or heals a portal
        marked needs_reauth meanwhile (DESIGN.md's residual risk "(b)" shrinks to outages
        longer than that, or a crash)."""
        # issued_at: the database clock when the call started (never later than HubSpot's).
        expires_at, refresh_after = schedule(issued_at, grant.expires_in)
        give_up = lease_deadline + JOURNAL_GRACE_LEASES * lease.seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                encrypted = await encrypt_grant(
                    self._cipher, self._keyring, key, grant, expires_at, refresh_after
                )
                journal_id = await self._leases.journal(lease, encrypted, intent)
                await self._checkpoint("after_journal")
                break
            except (VaultError, DatabaseError):
                pause = min(2.0, 0.2 * attempt)
                if self._clock() + pause >= give_up:
                    metrics.refreshed(Outcome.LOST, Failure.INTERNAL)
                    log.error("refresh.response_lost", portal=str(key), attempts=attempt)
                    raise
                await self._sleep(pause)
        committed = await self._leases.commit_refresh(lease, encrypted, journal_id)
        if committed is None:
            metrics.FENCED_WRITES.inc()
            metrics.refreshed(Outcome.FENCED)
            log.warning("refresh.fenced_out", portal=str(key), epoch=lease.epoch)
            # We stalled past our lease. If nobody stored a newer token since (another holder
            # failed, met invalid_grant because our call had rotated the token, or waits on
            # our unanswered call), our response is the live grant: apply it now.
            late = await self._leases.apply_late(lease, encrypted, journal_id)
            if late is not None:
                metrics.refreshed(Outcome.HEALED)
                log.warning("refresh.healed", portal=str(key), by="holder")
                if notify:
                    await self._coordinator.publish_refreshed(lease.portal_id, late.version)
                return Fresh(late, grant.access_token)
            current = await self._outcomes.reread(key)
            # Our access token is valid at HubSpot even though the row moved on: serve it
            # with its own expiry, scopes and fingerprint, never the newer row's.
            ours = replace(
                current,
                access_expires_at=expires_at,
                scopes=grant.scopes,
                access_fp=encrypted.access_fp,
            )
            return Fresh(ours, grant.access_token)
        metrics.refreshed(Outcome.SUCCESS)
        self._audit.record(
            "portal.refreshed",
            actor=self._replica,
            key=key,
            version=committed.version,
            expires_at=expires_at.isoformat(),
        )
        if notify:
            await self._coordinator.publish_refreshed(lease.portal_id, committed.version)
        log.debug("refresh.committed", portal=str(key), version=committed.version)
        return Fresh(committed, grant.access_token)

    def _answer_window(self, lease: Lease) -> float:
        """How long after it was sent a call's answer may still reach the journal: the
        holder's lease, :data:`JOURNAL_GRACE_LEASES` more of journal retries, and the last
        attempt's own duration (the refresh budget bounds it)."""
        return (1 + JOURNAL_GRACE_LEASES) * lease.seconds + self._settings.refresh_budget_seconds
