"""Append-only audit trail, written in batches off the hot path (implements ``AuditSink``).

:meth:`PostgresAudit.record` only appends to an in-memory queue; a background task flushes
it every ``interval`` seconds or every ``batch`` events, whichever comes first. The loss
window on a crash is therefore at most ``interval`` seconds of events (default 0.5 s); a
clean shutdown flushes everything. Token issues are tallied rather than queued one by one
(see ``AuditSink.issued``): a caller reading one portal's token 10,000 times a second makes
one event per flush window, with its ``count``. If Postgres is down, events are kept (up to
``limit``) and retried; beyond that the oldest are dropped and counted in
``broker_audit_dropped_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import structlog

from broker import metrics
from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import key_of
from broker.core.models import PortalKey
from broker.core.ports import AuditEvent, AuditFilter, AuditPosition
from broker.core.tasks import BackgroundLoop
from broker.errors import DatabaseError

log = structlog.get_logger(__name__)

_Row = tuple[str, str, str | None, int | None, int | None, dict[str, Any]]
#: (caller, portal, fingerprint, min_ttl, refreshed) -> [count, lowest remaining_ttl]
_Issues = dict[tuple[str, PortalKey, str, int, bool], list[int]]


class PostgresAudit:
    def __init__(
        self, db: Database, *, interval: float = 0.5, batch: int = 500, limit: int = 100_000
    ) -> None:
        self._db = db
        self._batch = batch
        self._queue: deque[_Row] = deque(maxlen=limit)
        self._issues: _Issues = {}
        # A full batch wakes it early; a failed flush keeps its rows queued for the next.
        self._flusher = BackgroundLoop(
            metrics.Background.AUDIT_FLUSH, self.flush, interval=interval, wait_first=True
        )

    def record(
        self, action: str, *, actor: str, key: PortalKey | None = None, **detail: object
    ) -> None:
        if len(self._queue) == self._queue.maxlen:
            metrics.AUDIT_DROPPED.inc()
        # An app-level event (no portal) names its app in the column too, from its "app"
        # detail: app-scoped searches (broker.core.audit) find it.
        app = detail.get("app") if key is None else key.app
        self._queue.append(
            (
                _storable(actor),
                action,
                app if isinstance(app, str) else None,
                None if key is None else key.hub_id,
                None if key is None else key.user_id,
                _storable(detail),
            )
        )
        if len(self._queue) >= self._batch:
            self._flusher.wake()

    def issued(
        self,
        actor: str,
        key: PortalKey,
        *,
        fingerprint: str,
        min_ttl: int,
        remaining_ttl: int,
        refreshed: bool,
    ) -> None:
        tally = self._issues.get(issue := (actor, key, fingerprint, min_ttl, refreshed))
        if tally is None:
            self._issues[issue] = [1, remaining_ttl]
            if len(self._issues) >= self._batch:
                self._flusher.wake()
        else:
            tally[0] += 1
            if remaining_ttl < tally[1]:
                tally[1] = remaining_ttl

    def _queue_issues(self) -> None:
        issues, self._issues = self._issues, {}
        for (actor, key, fingerprint, min_ttl, refreshed), (count, remaining) in issues.items():
            detail = {
                "fingerprint": fingerprint,
                "min_ttl": min_ttl,
                "remaining_ttl": remaining,
                "refreshed": refreshed,
                "count": count,
            }
            self.record("token.issued", actor=actor, key=key, **detail)

    async def search(
        self, match: AuditFilter, *, after: AuditPosition | None, limit: int
    ) -> list[AuditEvent]:
        # The row comparison (at, id) < ($9, $10) is the keyset: audit_events_at_id serves
        # it and the order. A scope array that is set excludes rows whose column is NULL.
        rows = await self._db.fetch(
            """SELECT id, at, actor, action, app, hub_id, user_id, detail FROM audit_events
               WHERE ($1::bigint IS NULL OR hub_id = $1) AND ($2::text IS NULL OR actor = $2)
                 AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR app = $4)
                 AND ($5::timestamptz IS NULL OR at >= $5)
                 AND ($6::timestamptz IS NULL OR at < $6)
                 AND ($7::text[] IS NULL OR app = ANY($7))
                 AND ($8::bigint[] IS NULL OR hub_id = ANY($8))
                 AND ($9::timestamptz IS NULL OR (at, id) < ($9, $10::bigint))
               ORDER BY at DESC, id DESC LIMIT $11""",
            match.hub_id,
            match.actor,
            match.action,
            match.app,
            match.since,
            match.until,
            None if match.apps is None else sorted(match.apps),
            None if match.hub_ids is None else sorted(match.hub_ids),
            None if after is None else after.at,
            None if after is None else after.id,
            limit,
        )
        return [AuditEvent(**dict(r)) for r in rows]

    async def most_requested(self, *, within_seconds: float, limit: int) -> list[PortalKey]:
        rows = await self._db.fetch(
            """SELECT app, hub_id, user_id FROM audit_events
               WHERE action = 'token.issued'
                 AND at > clock_timestamp() - make_interval(secs => $1)
               GROUP BY app, hub_id, user_id
               ORDER BY sum(COALESCE((detail->>'count')::bigint, 1)) DESC
               LIMIT $2""",
            within_seconds,
            limit,
        )
        return [key_of(r) for r in rows]

    def start(self) -> None:
        self._flusher.start()

    async def close(self) -> None:
        await self._flusher.close()
        with contextlib.suppress(DatabaseError):
            await self.flush()

    async def flush(self) -> int:
        """Write everything queued now; returns the number of events written."""
        written = 0
        self._queue_issues()
        while self._queue:
            rows = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                await self._copy(rows)
            except (DatabaseError, asyncio.CancelledError):
                # PostgreSQL unreachable, or the flusher stopped mid-write (shutdown): keep
                # them for the next flush, the one close() makes (at least once: a COPY
                # cut by the cancellation may have landed too).
                self._queue.extendleft(reversed(rows))
                raise
            except Exception:  # a row PostgreSQL refuses: it alone is lost, not its batch
                written += await self._one_by_one(rows)
                continue
            written += len(rows)
        return written

    async def _copy(self, rows: list[_Row]) -> None:
        await self._db.copy_records(
            "audit_events", ["actor", "action", "app", "hub_id", "user_id", "detail"], rows
        )

    async def _one_by_one(self, rows: list[_Row]) -> int:
        written = 0
        for at, row in enumerate(rows):
            try:
                await self._copy([row])
            except (DatabaseError, asyncio.CancelledError):  # the rest: the next flush
                self._queue.extendleft(reversed(rows[at:]))
                raise
            except Exception as exc:
                metrics.AUDIT_DROPPED.inc()
                log.error("audit.row_refused", action=row[1], error=type(exc).__name__)
            else:
                written += 1
        return written


def _storable(value: Any) -> Any:
    """``value`` with every U+0000 replaced: PostgreSQL stores none in text or jsonb, and one
    such character in a batch would fail the batch and, put back, every flush after it.
    Requests carrying one are refused (:mod:`broker.web.params`); this keeps any other way
    in (an identity provider's subject, an upstream message) from stopping the audit."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value
