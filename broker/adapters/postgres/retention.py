"""Deleting expired rows in PostgreSQL (implements ``RetentionStore``).

Every statement deletes at most ``limit`` rows picked by a subquery, so it holds its row
locks only briefly, and compares ages against ``clock_timestamp()``, the one clock all
replicas share. Which rows may go, and why that is safe for the refresh protocol, is
explained in :mod:`broker.core.retention`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broker.adapters.postgres.pool import Database

# Any constant shared by every replica: "htb-retention" as a 63-bit integer.
_LOCK_ID = int.from_bytes(hashlib.sha256(b"htb-retention").digest()[:8], "big") >> 1


def _deleted(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresRetention:
    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def exclusively(self) -> AsyncIterator[bool]:
        # A session-level lock on a connection of its own, so the deletes can commit batch
        # by batch while it is held. Database.connection() releases it on the way out (the
        # session's reset, or closing the connection), as PostgreSQL does if it drops.
        async with self._db.connection() as conn:
            yield bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_ID))

    async def delete_audit_events(self, *, older_than_days: int, limit: int) -> int:
        async with self._db.transaction() as conn:
            # Migration 0009: audit_events ignores DELETE unless this transaction says so.
            await conn.execute("SELECT set_config('broker.retention', 'on', true)")
            status = await conn.execute(
                """DELETE FROM audit_events WHERE id IN (
                       SELECT id FROM audit_events
                       WHERE at < clock_timestamp() - make_interval(days => $1)
                       ORDER BY at LIMIT $2)""",
                older_than_days,
                limit,
            )
        return _deleted(status)

    async def delete_delivered_events(
        self, *, older_than_days: int, limit: int, unsent_too: bool = False
    ) -> int:
        # fanned_out_at is stamped in the same statement that inserts the event's deliveries
        # (PostgresOutbox.fan_out), so a fanned-out event's deliveries are all visible here;
        # delivered_at is never cleared. SKIP LOCKED: an event being acknowledged right now
        # is simply left for the next sweep. Deliveries go with it (ON DELETE CASCADE).
        status = await self._db.execute(
            """DELETE FROM events WHERE id IN (
                   SELECT e.id FROM events e
                   WHERE e.at < clock_timestamp() - make_interval(days => $1)
                     AND (e.fanned_out_at IS NOT NULL OR $3)
                     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                     WHERE d.event_id = e.id AND d.delivered_at IS NULL)
                   ORDER BY e.at LIMIT $2
                   FOR UPDATE OF e SKIP LOCKED)""",
            older_than_days,
            limit,
            unsent_too,
        )
        return _deleted(status)

    async def delete_spent_journal(self, *, older_than_hours: int, limit: int) -> int:
        # Intents of calls never answered (a crash, a timeout) that old block nothing any
        # more: their window is a few leases long.
        intents = await self._db.execute(
            """DELETE FROM refresh_intents WHERE id IN (
                   SELECT id FROM refresh_intents
                   WHERE sent_at < clock_timestamp() - make_interval(hours => $1)
                   ORDER BY sent_at LIMIT $2)""",
            older_than_hours,
            limit,
        )
        status = await self._db.execute(
            """DELETE FROM token_journal WHERE id IN (
                   SELECT j.id FROM token_journal j JOIN portals p ON p.id = j.portal_id
                   WHERE j.created_at < clock_timestamp() - make_interval(hours => $1)
                     AND (j.applied_at IS NOT NULL OR j.base_version < p.version)
                   ORDER BY j.created_at LIMIT $2)""",
            older_than_hours,
            limit,
        )
        return _deleted(intents) + _deleted(status)

    async def delete_revoked_journal(self, *, limit: int) -> int:
        # An unapplied row may hold a newer (rotated) refresh token than the one the revoke
        # sent to HubSpot: queue it for the upstream revoke before it goes (HubSpot answers
        # 200 to a revoke of a token it no longer knows, so a duplicate costs one call).
        deleted: int = await self._db.fetchval(
            """WITH gone AS (
                   DELETE FROM token_journal WHERE id IN (
                       SELECT j.id FROM token_journal j JOIN portals p ON p.id = j.portal_id
                       WHERE p.state = 'revoked'
                       LIMIT $1)
                   RETURNING portal_id, refresh_ct, applied_at),
               queued AS (
                   INSERT INTO pending_revocations (app, hub_id, user_id, refresh_ct)
                   SELECT p.app, p.hub_id, p.user_id, g.refresh_ct
                   FROM gone g JOIN portals p ON p.id = g.portal_id
                   WHERE g.applied_at IS NULL)
               SELECT count(*) FROM gone""",
            limit,
        )
        return deleted
