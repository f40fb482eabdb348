"""The events outbox and its webhook deliveries in PostgreSQL (implements ``Outbox``).

One ``webhook_deliveries`` row per (event, endpoint), filled from ``events`` by
:meth:`PostgresOutbox.fan_out` (migration 0003 explains the columns). Every schedule and
claim compares against ``clock_timestamp()``, the one clock all replicas share.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import from_row
from broker.core.ports import DeliveryRecord, EventFilter, EventRecord, OutboxEvent, OutboxStats


def _event(row: asyncpg.Record) -> OutboxEvent:
    return from_row(OutboxEvent, row, id=row["event_id"])


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


_EVENT_COLUMNS = """e.id, e.type, e.app, e.hub_id, e.user_id, e.at, e.fanned_out_at, e.delivered_at,
    COALESCE((SELECT jsonb_agg(jsonb_build_object(
                  'endpoint', d.endpoint, 'attempts', d.attempts,
                  'next_attempt_at', d.next_attempt_at, 'last_attempt_at', d.last_attempt_at,
                  'last_error', d.last_error, 'delivered_at', d.delivered_at)
                  ORDER BY d.endpoint)
              FROM webhook_deliveries d WHERE d.event_id = e.id), '[]') AS deliveries"""


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _record(row: asyncpg.Record) -> EventRecord:
    deliveries = tuple(
        DeliveryRecord(
            endpoint=d["endpoint"],
            attempts=d["attempts"],
            next_attempt_at=datetime.fromisoformat(d["next_attempt_at"]),
            last_attempt_at=_time(d["last_attempt_at"]),
            last_error=d["last_error"],
            delivered_at=_time(d["delivered_at"]),
        )
        for d in row["deliveries"]
    )
    return from_row(EventRecord, row, deliveries=deliveries)


class PostgresEventLog:
    """The outbox for operators (implements ``EventLog``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def recent(
        self, match: EventFilter, *, before_id: int | None, limit: int
    ) -> list[EventRecord]:
        rows = await self._db.fetch(
            f"""SELECT {_EVENT_COLUMNS} FROM events e
                WHERE ($1::text IS NULL OR e.type = $1) AND ($2::text IS NULL OR e.app = $2)
                  AND ($3::bigint IS NULL OR e.hub_id = $3)
                  AND (NOT $4 OR e.delivered_at IS NULL)
                  AND ($5::text[] IS NULL OR e.app = ANY($5))
                  AND ($6::bigint[] IS NULL OR e.hub_id = ANY($6))
                  AND ($7::bigint IS NULL OR e.id < $7)
                ORDER BY e.id DESC LIMIT $8""",
            match.type,
            match.app,
            match.hub_id,
            match.undelivered,
            None if match.apps is None else sorted(match.apps),
            None if match.hub_ids is None else sorted(match.hub_ids),
            before_id,
            limit,
        )
        return [_record(r) for r in rows]

    async def get(self, event_id: int) -> EventRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.id = $1", event_id
        )
        return None if row is None else _record(row)

    async def redeliver(self, event_id: int, endpoints: Sequence[str]) -> EventRecord | None:
        async with self._db.transaction() as conn:
            # The event row first, as `delivered` locks it: an acknowledgement racing this
            # cannot mark the event delivered over the reset deliveries.
            found = await conn.fetchval("SELECT id FROM events WHERE id = $1 FOR UPDATE", event_id)
            if found is None:
                return None
            await conn.execute(
                """INSERT INTO webhook_deliveries (event_id, endpoint)
                   SELECT $1, endpoint FROM unnest($2::text[]) AS endpoint
                   ON CONFLICT (event_id, endpoint) DO UPDATE SET
                       delivered_at = NULL, last_error = NULL,
                       next_attempt_at = clock_timestamp()""",
                event_id,
                list(endpoints),
            )
            # fanned_out_at stays as it is: an event not fanned out yet still goes to every
            # receiver (the fan-out's ON CONFLICT keeps the delivery made here).
            await conn.execute("UPDATE events SET delivered_at = NULL WHERE id = $1", event_id)
            row = await conn.fetchrow(
                f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.id = $1", event_id
            )
        assert row is not None  # locked above
        return _record(row)
