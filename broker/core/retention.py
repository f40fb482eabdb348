"""Retention: old rows are deleted so the database does not grow forever, and a revoked
portal's journal rows (ciphertexts of its refresh token) do not outlive the revoke.

What goes (every age on the database clock; a setting of 0 keeps that kind forever):

* ``audit_events`` older than ``BROKER_AUDIT_RETENTION_DAYS`` (default 400).
* ``events`` older than ``BROKER_EVENTS_RETENTION_DAYS`` (default 30) that were fanned out
  and acknowledged by every webhook receiver, with their delivery rows. An event with an
  unacknowledged delivery is never deleted; one not fanned out yet only while webhooks are
  off (``BROKER_WEBHOOK_URLS`` empty: nothing will ever send it, and turning webhooks on
  later should not deliver a month-old backlog).
* ``token_journal`` rows older than ``BROKER_JOURNAL_RETENTION_HOURS`` (default 24) that are
  *applied* (``applied_at`` set) or *superseded* (``base_version`` below the portal's
  current ``version``); and every journal row of a ``revoked`` portal whatever its age and
  even at 0 hours: that is shredding, not retention. A revoke deletes them itself
  (:meth:`PortalRepository.revoke`); the sweep catches a row journaled afterwards by a
  refresh holder that stalled across the revoke (its fenced write then fails).

Why the sweep never deletes a journal row the refresh protocol (:mod:`broker.core.refresh`)
can still need, whatever the retention window:

* *Adoption* (``newer_journal_entry``) reads only rows with ``applied_at IS NULL AND
  base_version >= lease.version``, where ``lease.version`` is the portal's version when the
  lease was taken. ``version`` only ever grows (refresh, heal, re-install and revoke bump it;
  nothing lowers it), so a row that is applied or superseded now stays so and can never
  match again. The rows adoption can match — unapplied, not superseded — are never swept.
* *Late applies* (``apply_late``, a fenced-out holder) and the *healing sweep*
  (``heal_from_journal``) use a row only while the portal's ``version`` still equals the
  row's ``base_version``, i.e. while the row is unapplied and not superseded — again never
  swept. Such a row may carry the only live refresh token (a rotation while its holder was
  paused), so it is kept for as long as the portal sits at that version, e.g. in
  ``needs_reauth``, until a re-install supersedes it.
* ``commit_refresh``/``apply_late`` mark their row applied in the same transaction as the
  portal write; a row that vanished meanwhile would only make that stamp a no-op.
* *Intents* (``refresh_intents``) of calls never answered block a second call for a few
  leases after they were sent; the sweep deletes them only after the journal's window
  (hours), long after they stopped blocking anything.
* The revoked-portal rule: a revoked portal serves nothing and takes no lease, so nothing
  adopts or heals from it. A re-install makes it ``active`` again, but a row of the new
  grant can only be journaled under a lease taken after the re-install committed; the
  sweep's statement sees only rows committed before it began, so if it sees such a row it
  also sees the portal active, and leaves the row alone.

So the window is not what keeps the protocol safe; it is how long spent rows stay around
for inspection.

How it runs: every serving replica runs a :class:`RetentionSweeper`, every
``BROKER_RETENTION_INTERVAL`` seconds (jittered); a PostgreSQL advisory lock lets only one
sweep at a time, the others skip that round. ``broker retention sweep`` runs one sweep now
(e.g. from a CronJob). Deletes go in batches of :data:`BATCH` rows, one short statement
each, until a batch comes back short. A failed sweep is counted and logged; the loop goes
on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.ports import RetentionStore
from broker.core.tasks import BackgroundLoop

log = structlog.get_logger(__name__)

#: Rows per DELETE statement: small enough that no statement holds its locks for long.
BATCH = 5000
#: Report keys, one per table (also the ``table`` label of the metric).
TABLES = ("audit_events", "events", "token_journal")

# A table and a call that deletes one batch of its expired rows, returning how many.
_Step = tuple[str, Callable[[], Awaitable[int]]]


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of row is kept; 0 keeps it forever."""

    audit_days: int
    events_days: int
    journal_hours: int
    #: Webhooks are off: events never fanned out will never be sent, so they expire too.
    unsent_events_expire: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            audit_days=settings.audit_retention_days,
            events_days=settings.events_retention_days,
            journal_hours=settings.journal_retention_hours,
            unsent_events_expire=not settings.webhook_url_list,
        )


@dataclass(slots=True)
class SweepReport:
    #: False when another sweep held the lock: nothing was done.
    swept: bool
    #: Rows deleted per table (:data:`TABLES`).
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    seconds: float = 0.0


class RetentionSweeper:
    def __init__(
        self,
        policy: RetentionPolicy,
        *,
        store: RetentionStore,
        interval: float = 300.0,
        batch: int = BATCH,
    ) -> None:
        self._policy = policy
        self._store = store
        self._interval = interval
        self._batch = batch
        # Jittered by half, and first after a wait: replicas started together do not line
        # up, and a restart storm does not sweep at once.
        self._loop = BackgroundLoop(
            metrics.Background.RETENTION, self.sweep, interval=interval, jitter=0.5, wait_first=True
        )

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    async def sweep(self) -> SweepReport:
        """One sweep now, unless another replica is sweeping (``swept`` False)."""
        started = time.monotonic()
        async with self._store.exclusively() as mine:
            if not mine:
                log.debug("retention.skipped", reason="another sweep holds the lock")
                return SweepReport(swept=False)
            report = SweepReport(swept=True)
            for table, delete in self._steps():
                await self._drain(report, table, delete)
        report.seconds = time.monotonic() - started
        emit = log.info if any(report.deleted.values()) else log.debug
        emit("retention.swept", seconds=round(report.seconds, 3), **report.deleted)
        return report

    def _steps(self) -> list[_Step]:
        """(table, delete one batch), in order: shredding first, it depends on no setting."""
        policy, store, n = self._policy, self._store, self._batch
        steps: list[_Step] = [("token_journal", partial(store.delete_revoked_journal, limit=n))]
        if policy.journal_hours:
            hours = policy.journal_hours
            steps.append(
                (
                    "token_journal",
                    partial(store.delete_spent_journal, older_than_hours=hours, limit=n),
                )
            )
        if policy.events_days:
            days = policy.events_days
            steps.append(
                (
                    "events",
                    partial(
                        store.delete_delivered_events,
                        older_than_days=days,
                        limit=n,
                        unsent_too=policy.unsent_events_expire,
                    ),
                )
            )
        if policy.audit_days:
            days = policy.audit_days
            steps.append(
                ("audit_events", partial(store.delete_audit_events, older_than_days=days, limit=n))
            )
        return steps

    async def _drain(
        self, report: SweepReport, table: str, delete: Callable[[], Awaitable[int]]
    ) -> None:
        """Delete batch after batch until one comes back short."""
        while True:
            count = await delete()
            report.deleted[table] += count
            metrics.RETENTION_DELETED.labels(table).inc(count)
            if count < self._batch:
                return
