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
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from broker import metrics
from broker.config import Secret, Settings
from broker.core.grants import encrypt_grant
from broker.core.models import App, Lease, PortalKey, PortalRecord, PortalState, TokenGrant
from broker.core.ports import (
    AuditSink,
    Cipher,
    Coordinator,
    OAuthProvider,
    PortalRepository,
    RateLimiter,
    SecretStore,
)
from broker.core.signing import Keyring
from broker.core.tasks import finish_even_if_cancelled
from broker.errors import (
    AppMisconfigured,
    AppRetired,
    BrokerError,
    DatabaseError,
    GrantDead,
    HubSpotError,
    HubSpotUnavailable,
    LockUnavailable,
    NeedsReauth,
    NotFound,
    Quarantined,
    RefreshOutcomeUnknown,
    Revoked,
    Undecryptable,
    UpstreamError,
    VaultError,
)

log = structlog.get_logger(__name__)

_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 60.0  # a recovered HubSpot is retried within a minute
_GRACE_SECONDS = 1.0  # re-check before declaring a grant dead: a racing commit may land
#: A token with less left than this is not worth serving in place of an error.
USEFUL_SECONDS = 5.0
_APP_PAUSE_SECONDS = 60.0  # how long a misconfigured app's proactive refreshes pause
#: The longest HubSpot's Retry-After is believed (seconds).
RETRY_AFTER_CAP = 900.0
#: How many leases past its own a holder keeps trying to journal a response HubSpot sent.
JOURNAL_GRACE_LEASES = 2


class CircuitBreaker:
    """One per process for HubSpot's token host. After ``threshold`` consecutive
    unavailable answers it opens for ``cooldown`` seconds: refreshes fail fast instead of
    piling onto a host that is down; the first call after the cooldown is the probe."""

    def __init__(self, threshold: int = 5, cooldown: float = 15.0) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._open_until = 0.0

    def check(self) -> None:
        left = self._open_until - time.monotonic()
        if left > 0:
            metrics.REFRESHES.labels("skipped", "upstream_unavailable").inc()
            raise HubSpotUnavailable("HubSpot keeps failing; pausing calls", retry_after=left)

    def failed(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = time.monotonic() + self._cooldown
            self._failures = 0
            log.warning("hubspot.circuit_open", seconds=self._cooldown)

    def succeeded(self) -> None:
        self._failures = 0

    def open_for(self) -> float:
        return max(0.0, self._open_until - time.monotonic())


@dataclass(frozen=True, slots=True)
class Fresh:
    """A portal row that satisfies the caller, and the plaintext access token when this
    process just obtained it from HubSpot (saves a decrypt)."""

    record: PortalRecord
    access_token: str | None = None


def schedule(issued_at: datetime, expires_in: int) -> tuple[datetime, datetime]:
    """(expires_at, refresh_after) for a token issued no earlier than ``issued_at``.

    The refresh point is jittered between 60 and 72% of the lifetime so that portals
    installed or refreshed together drift apart instead of refreshing in lockstep."""
    share = random.uniform(0.60, 0.72)  # noqa: S311 - jitter, not crypto
    return (
        issued_at + timedelta(seconds=expires_in),
        issued_at + timedelta(seconds=expires_in * share),
    )


def raise_for_state(record: PortalRecord) -> None:
    """Callers of a portal that does not serve tokens get its 4xx at once."""
    if record.state is PortalState.NEEDS_REAUTH:
        raise NeedsReauth(f"portal {record.key} must be re-authorized by an operator")
    if record.state is PortalState.REVOKED:
        raise Revoked(f"portal {record.key} was revoked")
    if record.state is PortalState.QUARANTINED:
        raise Quarantined(f"portal {record.key} is quarantined by an operator")


def backoff_seconds(failures: int, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, never sooner than HubSpot's Retry-After, which is
    believed up to :data:`RETRY_AFTER_CAP` (a huge or bogus value must not park a portal for
    good)."""
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** min(failures, 16))
    delay = random.uniform(_BACKOFF_BASE / 2, ceiling)  # noqa: S311 - jitter, not crypto
    return max(delay, min(retry_after or 0.0, RETRY_AFTER_CAP))


#: The fault-test hook awaited at each protocol step (see ``RefreshEngine``).
Checkpoint = Callable[[str], Awaitable[None]]


async def _no_checkpoint(_: str) -> None:
    return None


class RefreshEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        portals: PortalRepository,
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
        """``checkpoint`` is awaited with the name of each protocol step as it is passed
        (``after_claim``, ``after_hubspot``, ``after_journal``): fault tests kill or pause
        the process there (:mod:`broker.dev.faults`), the state-machine test interleaves
        replicas there. ``clock`` and ``sleep`` time the protocol's own waits (the self-fence,
        the grace re-checks, the journal retries). Production passes none of them.
        ``keyring``: stores each new token's audit fingerprint with it (none: cache fills
        make it)."""
        self._settings = settings
        self._checkpoint = checkpoint or _no_checkpoint
        self._clock = clock
        self._sleep = sleep
        self._portals = portals
        self._coordinator = coordinator
        self._cipher = cipher
        self._secrets = secrets_store
        self._oauth = oauth
        self._limiter = limiter
        self._audit = audit
        self._breaker = CircuitBreaker()
        self._replica = replica_id
        self._keyring = keyring
        self._apps: dict[str, tuple[float, App]] = {}

    def hubspot_paused_for(self) -> float:
        """Seconds the circuit breaker keeps HubSpot calls off (0 when closed)."""
        return self._breaker.open_for()

    async def app(self, slug: str, *, installable: bool = False) -> App:
        """The app (cached 30 s). ``installable``: read now, and refused with
        :class:`AppRetired` when the app is retired (installs and install links)."""
        cached = self._apps.get(slug)
        now = time.monotonic()
        if cached is not None and cached[0] > now and not installable:
            return cached[1]
        app = await self._portals.get_app(slug)
        if app is None:
            raise NotFound(f"unknown app {slug!r}", code="app_not_found")
        self._apps[slug] = (now + 30.0, app)
        if installable and app.retired_at is not None:
            raise AppRetired(f"app {slug!r} is retired: it installs no new portal")
        return app

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
            locked = None
            if not redis_lock_stale:
                locked = await self._coordinator.try_lock(
                    lock_name, owner, self._settings.lease_seconds
                )
            if locked is not False:  # acquired, or Redis is down or stale: Postgres decides
                try:
                    lease = await self._portals.claim_lease(
                        record.id,
                        owner,
                        lease_seconds=self._settings.lease_seconds,
                        min_ttl=min_ttl,
                        ignore_backoff=False,
                    )
                    if lease is not None:
                        return await self.refresh_with_lease(record.key, lease, interactive=True)
                except UpstreamError:
                    if record.remaining() >= USEFUL_SECONDS:
                        return Fresh(record)  # refreshing failed; the old token is still valid
                    raise
                finally:
                    if locked:
                        await self._coordinator.unlock(lock_name, owner)
                record = await self._reread(record.key)
                if record.remaining() >= min_ttl or not record.state.serves_tokens:
                    continue
                if not record.lease_held() and record.backoff_left() > 0:
                    return self._while_backing_off(record)
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

    def _while_backing_off(self, record: PortalRecord) -> Fresh:
        """Refreshes are paused for this portal: serve what is still valid, else 503."""
        if record.remaining() >= USEFUL_SECONDS:
            return Fresh(record)
        raise HubSpotUnavailable(
            f"refreshing portal {record.key} keeps failing ({record.last_error}); retrying",
            retry_after=record.backoff_left(),
        )

    async def _reread(self, key: PortalKey) -> PortalRecord:
        record = await self._portals.get_portal(key)
        if record is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        return record

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
            current = await self._reread(record.key)
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
        self, key: PortalKey, lease: Lease, *, interactive: bool = False
    ) -> Fresh:
        """Steps 3-5 of the protocol for a lease already granted. Releases the lease on any
        failure; a lease that runs out meanwhile is simply fenced at the write."""
        started = self._clock()
        # From the claim, not from now: a proactive lease may have waited for a slot and the
        # app's rate limit, and another replica may claim the portal once it runs out.
        lease_deadline = lease.granted_at + lease.seconds
        await self._checkpoint("after_claim")
        try:
            try:
                app = await self.app(key.app)
                client_secrets = await self._secrets.client_secrets(key.app)
                (refresh_token,) = await self._cipher.decrypt(
                    [(lease.refresh_ct, key.context("refresh"))]
                )
                self._breaker.check()
                # The outcome-unknown record: from here on a call may be out.
                recorded = await self._portals.intend(lease, window=self._answer_window(lease))
            except (VaultError, DatabaseError, NotFound, Undecryptable) as exc:
                await self._internal_failure(key, lease, exc)
                raise
            if recorded.answer_waiting:
                # An earlier holder journaled an answer it never applied (it died, stalled,
                # or its commit failed): with rotation it holds the only live refresh token.
                adopted = await self._adopt(lease)
                if adopted is not None:
                    return adopted
                raise LockUnavailable(f"the journaled answer of portal {key} moved on")
            if recorded.lease_lost:
                metrics.REFRESHES.labels("failed", "lock_contention").inc()
                log.warning("refresh.lease_lost", portal=str(key))
                raise LockUnavailable("the lease ran out before HubSpot was called")
            if recorded.id is None:
                # An earlier call from this version is unanswered: it may have rotated the
                # token at HubSpot, and its holder may still journal the answer. A second
                # call now would be a duplicate, or meet invalid_grant: wait for it.
                return await self._outcome_unknown(key, lease, recorded.unanswered_for)
            intent = recorded.id
            try:
                # Self-fence: HubSpot's timeout, the encrypt, the journal and the commit
                # must fit (the intent is written: HubSpot, Vault encrypt, 2 x DB are left).
                left = lease_deadline - self._clock()
                if left < self._settings.refresh_budget_seconds:
                    metrics.REFRESHES.labels("failed", "lock_contention").inc()
                    log.warning("refresh.lease_too_short", portal=str(key), left=round(left, 1))
                    raise LockUnavailable("lease too short to call HubSpot safely")
                if interactive:
                    await self._limiter.acquire(key.app, interactive=True)  # never waits
            except BaseException:
                await self._forget_intent(intent)  # no call went out
                raise
            issued_at = lease.db_now + timedelta(seconds=self._clock() - started)
            try:
                grant = await self._refresh_upstream(app, client_secrets, refresh_token)
            except GrantDead as exc:
                self._breaker.succeeded()  # HubSpot answered: the host is fine
                await self._forget_intent(intent)
                return await self._grant_dead(key, lease, exc)
            except HubSpotError as exc:
                if not exc.outcome_unknown:  # it answered: no token was issued
                    await self._forget_intent(intent)
                await self._failed(key, lease, exc)
                raise
            self._breaker.succeeded()
            await self._checkpoint("after_hubspot")
            # The new refresh token exists only in this process until it is journaled:
            # a shutdown or a vanished caller must not cut storing it in half.
            fresh = await finish_even_if_cancelled(
                self._store(key, lease, grant, issued_at, lease_deadline, intent)
            )
        except BaseException:
            await asyncio.shield(self._portals.release_lease(lease))
            raise
        metrics.REFRESH_SECONDS.observe(self._clock() - started)
        return fresh

    async def _forget_intent(self, intent: int) -> None:
        """HubSpot answered without a token (or was never called). Best effort: an intent
        left behind only holds the portal's next call back until its window ends."""
        with contextlib.suppress(BrokerError):
            await self._portals.forget_intent(intent)

    async def heal_from_journal(self, limit: int = 100) -> int:
        """The healing sweep: a ``needs_reauth`` portal whose answered, unapplied journal row
        is from its current version holds a live grant after all (a holder stalled past its
        lease journaled it after another met ``invalid_grant``): apply it. Returns how many."""
        healed = await self._portals.heal_from_journal(limit)
        for record in healed:
            metrics.REFRESHES.labels("healed", "none").inc()
            log.warning("refresh.healed", portal=str(record.key), by="sweep")
            self._audit.record(
                "portal.healed", actor=self._replica, key=record.key, version=record.version
            )
            await self._coordinator.publish_refreshed(record.id, record.version)
        return len(healed)

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
    ) -> Fresh:
        """Encrypt, journal, commit. HubSpot has answered: the new refresh token exists only
        in memory until the journal row lands, so Vault or Postgres outages (a failover) are
        retried past the lease, for up to :data:`JOURNAL_GRACE_LEASES` more leases: the journal
        insert is not fenced, and a late row is adopted by the next holder or heals a portal
        marked needs_reauth meanwhile (DESIGN.md's residual risk "(b)" shrinks to outages
        longer than that, or a crash)."""
        # issued_at is the database clock when the HubSpot call started, so this expiry is
        # never later than HubSpot's own.
        expires_at, refresh_after = schedule(issued_at, grant.expires_in)
        give_up = lease_deadline + JOURNAL_GRACE_LEASES * lease.seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                encrypted = await encrypt_grant(
                    self._cipher, self._keyring, key, grant, expires_at, refresh_after
                )
                journal_id = await self._portals.journal(lease, encrypted, intent)
                await self._checkpoint("after_journal")
                break
            except (VaultError, DatabaseError):
                pause = min(2.0, 0.2 * attempt)
                if self._clock() + pause >= give_up:
                    metrics.REFRESHES.labels("lost", "internal").inc()
                    log.error("refresh.response_lost", portal=str(key), attempts=attempt)
                    raise
                await self._sleep(pause)
        committed = await self._portals.commit_refresh(lease, encrypted, journal_id)
        if committed is None:
            metrics.FENCED_WRITES.inc()
            metrics.REFRESHES.labels("fenced", "none").inc()
            log.warning("refresh.fenced_out", portal=str(key), epoch=lease.epoch)
            # We stalled past our lease. If nobody stored a newer token since (another holder
            # failed, met invalid_grant because our call had rotated the token, or waits on
            # our unanswered call), our response is the live grant: apply it now.
            late = await self._portals.apply_late(lease, encrypted, journal_id)
            if late is not None:
                metrics.REFRESHES.labels("healed", "none").inc()
                log.warning("refresh.healed", portal=str(key), by="holder")
                await self._coordinator.publish_refreshed(lease.portal_id, late.version)
                return Fresh(late, grant.access_token)
            current = await self._reread(key)
            # Our access token is valid at HubSpot even though the row moved on: serve it
            # with its own expiry, scopes and fingerprint, never the newer row's.
            ours = replace(
                current,
                access_expires_at=expires_at,
                scopes=grant.scopes,
                access_fp=encrypted.access_fp,
            )
            return Fresh(ours, grant.access_token)
        metrics.REFRESHES.labels("success", "none").inc()
        self._audit.record(
            "portal.refreshed",
            actor=self._replica,
            key=key,
            version=committed.version,
            expires_at=expires_at.isoformat(),
        )
        await self._coordinator.publish_refreshed(lease.portal_id, committed.version)
        log.info("refresh.committed", portal=str(key), version=committed.version)
        return Fresh(committed, grant.access_token)

    async def _internal_failure(self, key: PortalKey, lease: Lease, exc: BrokerError) -> None:
        """Not the portal's fault, nor HubSpot's (Vault or Postgres down, a client secret
        missing, a ciphertext that does not decrypt): counted, and backed off like any
        failure, so a portal failing for good is not claimed on every pass ahead of healthy
        ones; its state is left alone (DESIGN.md: internal never marks a portal)."""
        metrics.REFRESHES.labels("failed", "internal").inc()
        log.warning("refresh.internal_failure", portal=str(key), code=exc.code)
        if isinstance(exc, Undecryptable):
            with contextlib.suppress(BrokerError):
                await self._portals.flag(key, Undecryptable.code)
        with contextlib.suppress(BrokerError):  # Postgres may be what failed
            await self._portals.record_failure(
                lease,
                failure_class=exc.code,
                state=None,
                retry_in=backoff_seconds(lease.failures, None),
            )

    async def _failed(self, key: PortalKey, lease: Lease, exc: HubSpotError) -> None:
        metrics.REFRESHES.labels("failed", exc.failure_class).inc()
        retry_in = backoff_seconds(lease.failures, exc.upstream_retry_after)
        if exc.failure_class == "app_misconfigured":
            # Never the portal's fault: flag and pause the app, leave every portal alone.
            log.error("refresh.app_misconfigured", app=key.app, status=exc.hubspot_status)
            await self._portals.pause_app(key.app, _APP_PAUSE_SECONDS, exc.failure_class)
            await self._portals.release_lease(lease)
            return
        if exc.failure_class == "rate_limited":
            # Tighten the app's throttle on every replica, not just this portal's schedule
            # (retry_in honours Retry-After, up to RETRY_AFTER_CAP).
            await self._limiter.pause(key.app, retry_in)
        else:
            self._breaker.failed()
        log.warning("refresh.failed", portal=str(key), failure_class=exc.failure_class)
        await self._portals.record_failure(
            lease,
            failure_class=exc.failure_class,
            state=PortalState.REFRESH_FAILING,
            retry_in=retry_in,
        )

    def _answer_window(self, lease: Lease) -> float:
        """How long after it was sent a call's answer may still reach the journal: the
        holder's lease, :data:`JOURNAL_GRACE_LEASES` more of journal retries, and the last
        attempt's own duration (the refresh budget bounds it)."""
        return (1 + JOURNAL_GRACE_LEASES) * lease.seconds + self._settings.refresh_budget_seconds

    async def _outcome_unknown(self, key: PortalKey, lease: Lease, wait: float) -> Fresh:
        """Back the portal off (its state untouched) until the unanswered call can no longer
        be answered (then a call is safe, and an ``invalid_grant`` means what it says), and
        tell the caller."""
        written = await self._portals.record_failure(
            lease, failure_class=RefreshOutcomeUnknown.code, state=None, retry_in=wait
        )
        if not written:
            return self._fenced_out_outcome(await self._reread(key))
        metrics.REFRESHES.labels("failed", RefreshOutcomeUnknown.code).inc()
        log.warning("refresh.outcome_unknown", portal=str(key), wait=round(wait))
        raise RefreshOutcomeUnknown(
            f"an earlier refresh of portal {key} is still unanswered; retrying",
            retry_after=wait,
        )

    @staticmethod
    def _fenced_out_outcome(current: PortalRecord) -> Fresh:
        """Our lease moved on meanwhile (we stalled), so another holder owns the portal's
        fate: report what the row says, never an outcome we did not write."""
        raise_for_state(current)
        return Fresh(current)

    async def _adopt(self, lease: Lease) -> Fresh | None:
        """Commit an unapplied journal entry written since ``lease.version``, if any."""
        newer = await self._portals.newer_journal_entry(lease)
        if newer is None:
            return None
        journal_id, encrypted = newer
        committed = await self._portals.commit_refresh(lease, encrypted, journal_id)
        if committed is None:
            return None
        metrics.JOURNAL_ADOPTIONS.inc()
        metrics.REFRESHES.labels("adopted", "none").inc()
        log.info("refresh.adopted_journal", portal_id=lease.portal_id, journal_id=journal_id)
        await self._coordinator.publish_refreshed(lease.portal_id, committed.version)
        return Fresh(committed)

    async def _grant_dead(self, key: PortalKey, lease: Lease, exc: GrantDead) -> Fresh:
        """``invalid_grant``: adopt a journaled newer response, or accept that someone else
        refreshed, or — after a short grace re-check (a racing commit may land) — mark the
        portal ``needs_reauth``.

        No call from this version was unanswered when ours went out (``intend`` would have
        held it back), so a rotated token can only have been lost with a crash, or with a
        holder stalled past the answer window: if that one resumes, its fenced-out write or
        the healing sweep applies its answer and the portal heals."""
        started = self._clock()
        while True:
            adopted = await self._adopt(lease)
            if adopted is not None:
                return adopted
            current = await self._reread(key)
            if current.version != lease.version:
                await self._portals.release_lease(lease)
                return Fresh(current)
            if self._clock() - started >= _GRACE_SECONDS:
                break
            await self._sleep(0.25)
        written = await self._portals.record_failure(
            lease, failure_class="grant_dead", state=PortalState.NEEDS_REAUTH, retry_in=0
        )
        if not written:
            return self._fenced_out_outcome(await self._reread(key))
        metrics.REFRESHES.labels("failed", "grant_dead").inc()
        log.warning("refresh.grant_dead", portal=str(key), hubspot_status=exc.hubspot_status)
        self._audit.record("portal.needs_reauth", actor=self._replica, key=key)
        # Every replica must stop serving its cached token of this portal now.
        await self._coordinator.publish_invalidation(str(key))
        raise NeedsReauth(f"HubSpot rejected the refresh token of portal {key}")
