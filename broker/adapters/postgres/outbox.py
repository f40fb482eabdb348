"""The events outbox and its webhook deliveries in PostgreSQL (implements ``Outbox``).

One ``webhook_deliveries`` row per (event, endpoint), filled from ``events`` by
:meth:`PostgresOutbox.fan_out` (migration 0003 explains the columns). Every schedule and
claim compares against ``clock_timestamp()``, the one clock all replicas share.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from broker.adapters.postgres.pool import Database
from broker.core.webhooks import OutboxEvent, OutboxStats


def _event(row: asyncpg.Record) -> OutboxEvent:
    return OutboxEvent(
        id=row["event_id"],
        type=row["type"],
        app=row["app"],
        hub_id=row["hub_id"],
        user_id=row["user_id"],
        payload=row["payload"],
        at=row["at"],
        attempts=row["attempts"],
        delivery_id=row["delivery_id"],
        endpoint=row["endpoint"],
    )


class PostgresOutbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def fan_out(self, endpoints: Sequence[str], *, limit: int) -> int:
        # Selecting by the fanned_out_at marker, not by an id cursor: ids are taken at insert
        # and committed out of order, so a cursor would skip an event committed late.
        # SKIP LOCKED lets replicas fan out at once without waiting on each other.
        count: int = await self._db.fetchval(
            """WITH fresh AS (
                   SELECT id FROM events WHERE fanned_out_at IS NULL
                   ORDER BY id LIMIT $2
                   FOR UPDATE SKIP LOCKED),
               deliveries AS (
                   INSERT INTO webhook_deliveries (event_id, endpoint)
                   SELECT fresh.id, endpoint FROM fresh CROSS JOIN unnest($1::text[]) AS endpoint
                   ON CONFLICT (event_id, endpoint) DO NOTHING),
               stamped AS (
                   UPDATE events SET fanned_out_at = clock_timestamp()
                   FROM fresh WHERE events.id = fresh.id
                   RETURNING 1)
               SELECT count(*) FROM stamped""",
            list(endpoints),
            limit,
        )
        return count

    async def claim(
        self, endpoint: str, *, owner: str, limit: int, lease_seconds: float
    ) -> list[OutboxEvent]:
        """The claim pushes ``next_attempt_at`` out by the lease: until then nobody else can
        claim the row, and if its holder never reports, it is simply due again afterwards.
        A replica that read the row before another's claim committed re-checks it under
        the row lock (READ COMMITTED) and skips it."""
        rows = await self._db.fetch(
            """WITH due AS (
                   SELECT id FROM webhook_deliveries
                   WHERE endpoint = $1 AND delivered_at IS NULL
                     AND next_attempt_at <= clock_timestamp()
                   ORDER BY next_attempt_at, id
                   LIMIT $3
                   FOR UPDATE SKIP LOCKED)
               UPDATE webhook_deliveries d SET
                   attempts = d.attempts + 1, claimed_by = $2,
                   last_attempt_at = clock_timestamp(),
                   next_attempt_at = clock_timestamp() + make_interval(secs => $4)
               FROM due, events e
               WHERE d.id = due.id AND e.id = d.event_id
               RETURNING d.id AS delivery_id, d.endpoint, d.attempts, e.id AS event_id,
                         e.type, e.app, e.hub_id, e.user_id, e.payload, e.at""",
            endpoint,
            owner,
            limit,
            lease_seconds,
        )
        return sorted((_event(r) for r in rows), key=lambda event: event.id)

    async def delivered(self, delivery_id: int) -> None:
        async with self._db.transaction() as conn:
            event_id = await conn.fetchval(
                "SELECT event_id FROM webhook_deliveries WHERE id = $1", delivery_id
            )
            if event_id is None:
                return
            # Lock the event first: two replicas acknowledging its last two endpoints at once
            # are serialized, so the second one sees the first and stamps the event.
            await conn.execute("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", event_id)
            await conn.execute(
                """UPDATE webhook_deliveries SET delivered_at = clock_timestamp(),
                       last_error = NULL
                   WHERE id = $1 AND delivered_at IS NULL""",
                delivery_id,
            )
            await conn.execute(
                """UPDATE events SET delivered_at = clock_timestamp()
                   WHERE id = $1 AND delivered_at IS NULL
                     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries
                                     WHERE event_id = $1 AND delivered_at IS NULL)""",
                event_id,
            )

    async def failed(
        self, delivery_id: int, attempt: int, *, error_code: str, retry_in: float
    ) -> None:
        await self._db.execute(
            """UPDATE webhook_deliveries SET last_error = $3,
                   next_attempt_at = clock_timestamp() + make_interval(secs => $4)
               WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL""",
            delivery_id,
            attempt,
            error_code,
            retry_in,
        )

    async def release(self, delivery_id: int, attempt: int) -> None:
        await self._db.execute(
            """UPDATE webhook_deliveries SET next_attempt_at = clock_timestamp()
               WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL""",
            delivery_id,
            attempt,
        )

    async def stats(self, endpoints: Sequence[str], *, stuck_after: int) -> OutboxStats:
        row = await self._db.fetchrow(
            """WITH unacked AS (
                   SELECT d.attempts, e.at
                   FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
                   WHERE d.delivered_at IS NULL AND d.endpoint = ANY($1::text[])
                   UNION ALL
                   SELECT 0, at FROM events WHERE fanned_out_at IS NULL)
               SELECT count(*) AS pending,
                      count(*) FILTER (WHERE attempts >= $2) AS stuck,
                      COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(at)), 0)::float8
                          AS oldest
               FROM unacked""",
            list(endpoints),
            stuck_after,
        )
        assert row is not None  # an aggregate always returns one row
        return OutboxStats(pending=row["pending"], stuck=row["stuck"], oldest_seconds=row["oldest"])
