"""What a refresh lease holder records when its refresh does not end in its own commit
(DESIGN.md, "Refreshing", steps 4-5): an internal failure or a HubSpot error backed off, an
earlier unanswered call waited for, a journaled answer adopted, a dead grant confirmed (after
a grace re-check) and announced, and the healing sweep that applies late answers."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import structlog

from broker import metrics
from broker.core.apps import AppCatalog
from broker.core.models import Lease, PortalKey, PortalRecord, PortalState
from broker.core.ports import AuditSink, Coordinator, LeaseRepository, PortalRepository, RateLimiter
from broker.core.refresh_policy import (
    APP_PAUSE_SECONDS,
    GRACE_SECONDS,
    CircuitBreaker,
    Fresh,
    backoff_seconds,
    raise_for_state,
)
from broker.errors import (
    BrokerError,
    GrantDead,
    HubSpotError,
    NeedsReauth,
    NotFound,
    RefreshOutcomeUnknown,
    Undecryptable,
)
from broker.metrics import Failure, Outcome

log = structlog.get_logger(__name__)


class Outcomes:
    def __init__(
        self,
        *,
        portals: PortalRepository,
        leases: LeaseRepository,
        apps: AppCatalog,
        coordinator: Coordinator,
        limiter: RateLimiter,
        audit: AuditSink,
        breaker: CircuitBreaker,
        replica_id: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._portals = portals
        self._leases = leases
        self._apps = apps
        self._coordinator = coordinator
        self._limiter = limiter
        self._audit = audit
        self._breaker = breaker
        self._replica = replica_id
        self._clock = clock
        self._sleep = sleep

    async def reread(self, key: PortalKey) -> PortalRecord:
        """The portal's row now; :class:`NotFound` when it is gone."""
        record = await self._portals.get_portal(key)
        if record is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        return record

    async def forget_intent(self, intent: int) -> None:
        """HubSpot answered without a token (or was never called). Best effort: an intent
        left behind only holds the portal's next call back until its window ends."""
        with contextlib.suppress(BrokerError):
            await self._leases.forget_intent(intent)

    async def heal_from_journal(self, limit: int = 100) -> int:
        """The healing sweep: a ``needs_reauth`` portal whose answered, unapplied journal row
        is from its current version holds a live grant after all (a holder stalled past its
        lease journaled it after another met ``invalid_grant``): apply it. Returns how many."""
        healed = await self._leases.heal_from_journal(limit)
        for record in healed:
            metrics.refreshed(Outcome.HEALED)
            log.warning("refresh.healed", portal=str(record.key), by="sweep")
            self._audit.record(
                "portal.healed", actor=self._replica, key=record.key, version=record.version
            )
            await self._coordinator.publish_refreshed(record.id, record.version)
        return len(healed)

    async def internal_failure(self, key: PortalKey, lease: Lease, exc: BrokerError) -> None:
        """Not the portal's fault, nor HubSpot's (Vault or Postgres down, a client secret
        missing, a ciphertext that does not decrypt): counted, and backed off like any
        failure, so a portal failing for good is not claimed on every pass ahead of healthy
        ones; its state is left alone (DESIGN.md: internal never marks a portal)."""
        metrics.refreshed(Outcome.FAILED, Failure.INTERNAL)
        log.warning("refresh.internal_failure", portal=str(key), code=exc.code)
        if isinstance(exc, Undecryptable):
            with contextlib.suppress(BrokerError):
                await self._portals.flag(key, Undecryptable.code)
        with contextlib.suppress(BrokerError):  # Postgres may be what failed
            await self._leases.record_failure(
                lease,
                failure_class=exc.code,
                state=None,
                retry_in=backoff_seconds(lease.failures, None),
            )

    async def failed(self, key: PortalKey, lease: Lease, exc: HubSpotError) -> None:
        metrics.refreshed(Outcome.FAILED, exc.failure_class)
        retry_in = backoff_seconds(lease.failures, exc.upstream_retry_after)
        if exc.failure_class == "app_misconfigured":
            # Never the portal's fault: flag and pause the app, leave every portal alone.
            log.error("refresh.app_misconfigured", app=key.app, status=exc.hubspot_status)
            await self._apps.pause(key.app, APP_PAUSE_SECONDS, exc.failure_class)
            await self._leases.release_lease(lease)
            return
        if exc.failure_class == "rate_limited":
            # Tighten the app's throttle on every replica, not just this portal's schedule
            # (retry_in honours Retry-After, up to RETRY_AFTER_CAP).
            await self._limiter.pause(key.app, retry_in)
        else:
            self._breaker.failed()
        log.warning("refresh.failed", portal=str(key), failure_class=exc.failure_class)
        await self._leases.record_failure(
            lease,
            failure_class=exc.failure_class,
            state=PortalState.REFRESH_FAILING,
            retry_in=retry_in,
        )

    async def outcome_unknown(self, key: PortalKey, lease: Lease, wait: float) -> Fresh:
        """Back the portal off (its state untouched) until the unanswered call can no longer
        be answered (then a call is safe, and an ``invalid_grant`` means what it says), and
        tell the caller."""
        written = await self._leases.record_failure(
            lease, failure_class=RefreshOutcomeUnknown.code, state=None, retry_in=wait
        )
        if not written:
            return self.fenced_out(await self.reread(key))
        metrics.refreshed(Outcome.FAILED, RefreshOutcomeUnknown.code)
        log.warning("refresh.outcome_unknown", portal=str(key), wait=round(wait))
        raise RefreshOutcomeUnknown(
            f"an earlier refresh of portal {key} is still unanswered; retrying",
            retry_after=wait,
        )

    @staticmethod
    def fenced_out(current: PortalRecord) -> Fresh:
        """Our lease moved on meanwhile (we stalled), so another holder owns the portal's
        fate: report what the row says, never an outcome we did not write."""
        raise_for_state(current)
        return Fresh(current)

    async def adopt(self, lease: Lease) -> Fresh | None:
        """Commit an unapplied journal entry written since ``lease.version``, if any."""
        newer = await self._leases.newer_journal_entry(lease)
        if newer is None:
            return None
        journal_id = newer.id
        committed = await self._leases.commit_refresh(lease, newer.grant, journal_id)
        if committed is None:
            return None
        metrics.JOURNAL_ADOPTIONS.inc()
        metrics.refreshed(Outcome.ADOPTED)
        log.info("refresh.adopted_journal", portal_id=lease.portal_id, journal_id=journal_id)
        await self._coordinator.publish_refreshed(lease.portal_id, committed.version)
        return Fresh(committed)

    async def grant_dead(self, key: PortalKey, lease: Lease, exc: GrantDead) -> Fresh:
        """``invalid_grant``: adopt a journaled newer response, or accept that someone else
        refreshed, or — after a short grace re-check (a racing commit may land) — mark the
        portal ``needs_reauth``.

        No call from this version was unanswered when ours went out (``intend`` would have
        held it back), so a rotated token can only have been lost with a crash, or with a
        holder stalled past the answer window: if that one resumes, its fenced-out write or
        the healing sweep applies its answer and the portal heals."""
        started = self._clock()
        while True:
            adopted = await self.adopt(lease)
            if adopted is not None:
                return adopted
            current = await self.reread(key)
            if current.version != lease.version:
                await self._leases.release_lease(lease)
                return Fresh(current)
            if self._clock() - started >= GRACE_SECONDS:
                break
            await self._sleep(0.25)
        written = await self._leases.record_failure(
            lease, failure_class="grant_dead", state=PortalState.NEEDS_REAUTH, retry_in=0
        )
        if not written:
            return self.fenced_out(await self.reread(key))
        metrics.refreshed(Outcome.FAILED, Failure.GRANT_DEAD)
        log.warning("refresh.grant_dead", portal=str(key), hubspot_status=exc.hubspot_status)
        self._audit.record("portal.needs_reauth", actor=self._replica, key=key)
        # Every replica must stop serving its cached token of this portal now.
        await self._coordinator.publish_invalidation(str(key))
        raise NeedsReauth(f"HubSpot rejected the refresh token of portal {key}")
