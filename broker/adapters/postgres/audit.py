"""Append-only audit trail, written in batches off the hot path (implements ``AuditSink``).

:meth:`PostgresAudit.record` only appends to an in-memory queue; a background task flushes
it every ``interval`` seconds or every ``batch`` events, whichever comes first. The loss
window on a crash is therefore at most ``interval`` seconds of events (default 0.5 s); a
clean shutdown flushes everything. If Postgres is down, events are kept (up to ``limit``)
and retried; beyond that the oldest are dropped and counted in
``broker_audit_dropped_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import datetime
from typing import Any

import structlog

from broker import metrics
from broker.adapters.postgres.pool import Database
from broker.core.models import PortalKey
from broker.core.tasks import cancel_and_wait
from broker.errors import DatabaseError

log = structlog.get_logger(__name__)

_Row = tuple[str, str, str | None, int | None, int | None, dict[str, Any]]


class PostgresAudit:
    def __init__(
        self, db: Database, *, interval: float = 0.5, batch: int = 500, limit: int = 100_000
    ) -> None:
        self._db = db
        self._interval = interval
        self._batch = batch
        self._queue: deque[_Row] = deque(maxlen=limit)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(
        self, action: str, *, actor: str, key: PortalKey | None = None, **detail: object
    ) -> None:
        if len(self._queue) == self._queue.maxlen:
            metrics.AUDIT_DROPPED.inc()
        self._queue.append(
            (
                actor,
                action,
                None if key is None else key.app,
                None if key is None else key.hub_id,
                None if key is None else key.user_id,
                detail,
            )
        )
        if len(self._queue) >= self._batch:
            self._wake.set()

    async def query(
        self,
        *,
        hub_id: int | None,
        actor: str | None,
        action: str | None,
        since: datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        rows = await self._db.fetch(
            """SELECT id, at, actor, action, app, hub_id, user_id, detail FROM audit_events
               WHERE ($1::bigint IS NULL OR hub_id = $1) AND ($2::text IS NULL OR actor = $2)
                 AND ($3::text IS NULL OR action = $3)
                 AND ($4::timestamptz IS NULL OR at >= $4)
               ORDER BY at DESC, id DESC LIMIT $5""",
            hub_id,
            actor,
            action,
            since,
            limit,
        )
        return [dict(r) for r in rows]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-flusher")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        with contextlib.suppress(DatabaseError):
            await self.flush()

    async def flush(self) -> int:
        """Write everything queued now; returns the number of events written."""
        written = 0
        while self._queue:
            rows = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                await self._db.copy_records(
                    "audit_events", ["actor", "action", "app", "hub_id", "user_id", "detail"], rows
                )
            except DatabaseError:
                self._queue.extendleft(reversed(rows))
                raise
            written += len(rows)
        return written

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except DatabaseError:
                metrics.AUDIT_FLUSH_FAILURES.inc()
                log.warning("audit.flush_failed", queued=len(self._queue))
            except Exception:  # a bug must not end auditing for the life of the process
                metrics.AUDIT_FLUSH_FAILURES.inc()
                log.exception("audit.flush_crashed", queued=len(self._queue))
