"""Upstream revocations owed to HubSpot (``pending_revocations``), retried until done (part of
``PostgresPortals``)."""

from __future__ import annotations

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import pending_revocation_of
from broker.core.ports import PendingRevocation


class RevocationRows:
    _db: Database

    async def due_revocations(self, limit: int) -> list[PendingRevocation]:
        rows = await self._db.fetch(
            """UPDATE pending_revocations SET
                   next_attempt_at = clock_timestamp() + interval '60 seconds'
               WHERE id IN (SELECT id FROM pending_revocations
                            WHERE next_attempt_at <= clock_timestamp()
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               RETURNING id, app, hub_id, user_id, refresh_ct, attempts""",
            limit,
        )
        return [pending_revocation_of(r) for r in rows]

    async def revocation_done(self, pending_id: int) -> None:
        await self._db.execute("DELETE FROM pending_revocations WHERE id = $1", pending_id)

    async def revocation_failed(self, pending_id: int, error: str, retry_in: float) -> None:
        await self._db.execute(
            """UPDATE pending_revocations SET attempts = attempts + 1, last_error = $2,
                   next_attempt_at = clock_timestamp() + make_interval(secs => $3)
               WHERE id = $1""",
            pending_id,
            error,
            retry_in,
        )
