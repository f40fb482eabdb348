"""The refresh protocol's rows in PostgreSQL (DESIGN.md, "Refreshing"): leases, intents, the
token journal and the fenced commit (part of ``PostgresPortals``).

Every expiry and lease decision compares against ``clock_timestamp()``: the database clock
is the one clock all replicas share."""

from __future__ import annotations

from typing import Any

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import (
    LEASE_COLUMNS,
    PORTAL_COLUMNS,
    SERVING,
    due_lease_of,
    insert_event,
    journal_entry_of,
    key_of,
    lease_of,
    portal_of,
)
from broker.core.models import Intent, Lease, PortalRecord, PortalState
from broker.core.ports import DueLease, EncryptedGrant, JournalEntry

#: The fenced commit: the lease that read the row still holds it.
_LEASE_HOLDS = "lease_epoch = $8 AND lease_owner = $9 AND " + SERVING
#: A journaled answer applied outside its lease: only while the row is still at the version
#: the call started from (no newer token was stored since), nobody holds a lease, and the
#: state is one a refresh may change (never revoked or quarantined).
_STILL_NEWEST = """version = $8 AND state IN ('active', 'refresh_failing', 'needs_reauth')
    AND (lease_until IS NULL OR lease_until <= clock_timestamp())"""


def _apply_sql(condition: str) -> str:
    """Store a refreshed grant (its access token's fingerprint ``$7``) if ``condition``
    holds (``$8`` on are the fence),
    mark journal row ``$6`` applied and note a recovery, in one statement (one round trip,
    atomic without a transaction block). ``before`` locks the row and reads its state
    before the write, for the event."""
    return f"""WITH before AS (
            SELECT state AS prev_state FROM portals WHERE id = $1 FOR UPDATE),
        applied AS (
            UPDATE portals SET
                refresh_ct = $2, access_ct = $3, access_expires_at = $4, access_fp = $7,
                refresh_after = $5, version = version + 1, state = 'active',
                failure_count = 0, last_error = NULL, next_attempt_at = NULL,
                lease_owner = NULL, lease_until = NULL,
                refreshed_at = clock_timestamp(), updated_at = clock_timestamp()
            FROM before
            WHERE id = $1 AND {condition}
            RETURNING {PORTAL_COLUMNS}, prev_state),
        marked AS (
            UPDATE token_journal SET applied_at = clock_timestamp()
            WHERE id = $6 AND EXISTS (SELECT 1 FROM applied)),
        recovered AS (
            INSERT INTO events (type, app, hub_id, user_id, payload)
            SELECT 'portal.recovered', app, hub_id, user_id,
                   CASE WHEN prev_state = 'needs_reauth' THEN '{{"healed": true}}'::jsonb
                        ELSE '{{}}'::jsonb END
            FROM applied WHERE prev_state <> 'active')
        SELECT * FROM applied"""


# Built once: asyncpg's statement cache is keyed by the query text.
_COMMIT = _apply_sql(_LEASE_HOLDS)
_APPLY_LATE = _apply_sql(_STILL_NEWEST)


async def _apply(
    db: Database,
    query: str,
    portal_id: int,
    fence: tuple[Any, ...],
    grant: EncryptedGrant,
    journal_id: int,
) -> PortalRecord | None:
    row = await db.fetchrow(
        query,
        portal_id,
        grant.refresh_ct,
        grant.access_ct,
        grant.expires_at,
        grant.refresh_after,
        journal_id,
        grant.access_fp,
        *fence,
    )
    return None if row is None else portal_of(row)


#: ``claim_due``'s statement ($1 owner, $2 limit, $3 lease seconds); the bench's EXPLAIN at
#: 1,000,000 rows runs this very text. The bound on ``refresh_after`` is a sub-select so it
#: is an index condition: a bare (volatile) ``clock_timestamp()`` is only a filter, and a
#: claim finding fewer due portals than its limit then walks the whole index.
CLAIM_DUE_SQL = f"""WITH due AS (
        SELECT id AS due_id FROM portals
        WHERE {SERVING} AND refresh_ct IS NOT NULL
          AND refresh_after <= (SELECT clock_timestamp())
          AND (lease_until IS NULL OR lease_until <= clock_timestamp())
          AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
          AND app NOT IN (SELECT slug FROM apps WHERE paused_until > clock_timestamp())
        ORDER BY refresh_after
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
    UPDATE portals p SET
        lease_owner = $1, lease_epoch = p.lease_epoch + 1,
        lease_until = clock_timestamp() + make_interval(secs => $3)
    FROM due WHERE p.id = due.due_id
    RETURNING p.app, p.hub_id, p.user_id, {LEASE_COLUMNS}"""


class LeaseRows:
    _db: Database

    async def claim_lease(
        self,
        portal_id: int,
        owner: str,
        *,
        lease_seconds: float,
        min_ttl: float,
        ignore_backoff: bool,
    ) -> Lease | None:
        row = await self._db.fetchrow(
            f"""UPDATE portals SET
                    lease_owner = $2, lease_epoch = lease_epoch + 1,
                    lease_until = clock_timestamp() + make_interval(secs => $3)
                WHERE id = $1 AND {SERVING}
                  AND refresh_ct IS NOT NULL
                  AND (lease_until IS NULL OR lease_until <= clock_timestamp())
                  AND (access_expires_at IS NULL
                       OR access_expires_at < clock_timestamp() + make_interval(secs => $4))
                  AND ($5 OR next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
                RETURNING {LEASE_COLUMNS}""",
            portal_id,
            owner,
            lease_seconds,
            min_ttl,
            ignore_backoff,
        )
        return None if row is None else lease_of(row, owner)

    async def claim_due(self, owner: str, *, limit: int, lease_seconds: float) -> list[DueLease]:
        """Leases for up to ``limit`` portals whose refresh time has come, oldest first.
        ``SKIP LOCKED``: replicas scanning at once split the work instead of queueing."""
        rows = await self._db.fetch(
            CLAIM_DUE_SQL,
            owner,
            limit,
            lease_seconds,
        )
        return [due_lease_of(r, owner) for r in rows]

    async def intend(self, lease: Lease, *, window: float) -> Intent:
        # One statement, serialized per portal by the row lock: the lease must still be held
        # (a lapsed holder writes nothing), no journaled answer may wait to be applied, and
        # no call from this version may be unanswered.
        row = await self._db.fetchrow(
            """WITH held AS (
                   SELECT id FROM portals
                   WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3
                     AND lease_until > clock_timestamp()
                   FOR UPDATE),
               answered AS (
                   SELECT EXISTS (SELECT 1 FROM token_journal
                                  WHERE portal_id = $1 AND applied_at IS NULL
                                    AND base_version >= $4) AS found),
               blocking AS (
                   SELECT max(sent_at) AS last FROM refresh_intents
                   WHERE portal_id = $1 AND base_version >= $4
                     AND sent_at > clock_timestamp() - make_interval(secs => $5)),
               ins AS (
                   INSERT INTO refresh_intents (portal_id, lease_epoch, lease_owner,
                                                base_version)
                   SELECT $1, $2, $3, $4 FROM held, answered, blocking
                   WHERE NOT answered.found AND blocking.last IS NULL
                   RETURNING id)
               SELECT (SELECT id FROM ins) AS id,
                      EXISTS (SELECT 1 FROM held) AS held,
                      (SELECT found FROM answered) AS answered,
                      extract(epoch FROM (SELECT last FROM blocking)
                              + make_interval(secs => $5) - clock_timestamp())::float8 AS wait""",
            lease.portal_id,
            lease.epoch,
            lease.owner,
            lease.version,
            window,
        )
        assert row is not None  # the outer SELECT always returns one row
        return Intent(
            id=row["id"],
            lease_lost=not row["held"],
            answer_waiting=row["answered"],
            unanswered_for=max(0.0, row["wait"] or 0.0),
        )

    async def forget_intent(self, intent_id: int) -> None:
        await self._db.execute("DELETE FROM refresh_intents WHERE id = $1", intent_id)

    async def journal(self, lease: Lease, grant: EncryptedGrant, intent_id: int | None) -> int:
        journal_id: int = await self._db.fetchval(
            """WITH answered AS (DELETE FROM refresh_intents WHERE id = $9)
               INSERT INTO token_journal (portal_id, lease_epoch, lease_owner, base_version,
                                          refresh_ct, access_ct, access_expires_at,
                                          refresh_after)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
            lease.portal_id,
            lease.epoch,
            lease.owner,
            lease.version,
            grant.refresh_ct,
            grant.access_ct,
            grant.expires_at,
            grant.refresh_after,
            intent_id,
        )
        return journal_id

    async def commit_refresh(
        self, lease: Lease, grant: EncryptedGrant, journal_id: int
    ) -> PortalRecord | None:
        fence = (lease.epoch, lease.owner)
        return await _apply(self._db, _COMMIT, lease.portal_id, fence, grant, journal_id)

    async def apply_late(
        self, lease: Lease, grant: EncryptedGrant, journal_id: int
    ) -> PortalRecord | None:
        fence = (lease.version,)
        return await _apply(self._db, _APPLY_LATE, lease.portal_id, fence, grant, journal_id)

    async def heal_from_journal(self, limit: int) -> list[PortalRecord]:
        rows = await self._db.fetch(
            """SELECT DISTINCT ON (p.id) p.id, p.version, j.id AS journal_id, j.refresh_ct,
                      j.access_ct, j.access_expires_at,
                      COALESCE(j.refresh_after, j.access_expires_at) AS refresh_after
               FROM portals p JOIN token_journal j ON j.portal_id = p.id
               WHERE p.state = 'needs_reauth' AND j.applied_at IS NULL
                 AND j.base_version >= p.version
               ORDER BY p.id, j.id DESC
               LIMIT $1""",
            limit,
        )
        healed = []
        for r in rows:
            grant = EncryptedGrant(
                r["refresh_ct"], r["access_ct"], r["access_expires_at"], r["refresh_after"]
            )
            record = await _apply(
                self._db, _APPLY_LATE, r["id"], (r["version"],), grant, r["journal_id"]
            )
            if record is not None:
                healed.append(record)
        return healed

    async def newer_journal_entry(self, lease: Lease) -> JournalEntry | None:
        row = await self._db.fetchrow(
            """SELECT id, refresh_ct, access_ct, access_expires_at,
                      COALESCE(refresh_after, access_expires_at) AS refresh_after
               FROM token_journal
               WHERE portal_id = $1 AND applied_at IS NULL AND base_version >= $2
               ORDER BY id DESC LIMIT 1""",
            lease.portal_id,
            lease.version,
        )
        return None if row is None else journal_entry_of(row)

    async def record_failure(
        self, lease: Lease, *, failure_class: str, state: PortalState | None, retry_in: float
    ) -> bool:
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                f"""WITH before AS (
                        SELECT state AS prev_state FROM portals WHERE id = $1 FOR UPDATE)
                    UPDATE portals SET
                        state = COALESCE($4, state), failure_count = failure_count + 1,
                        last_error = $5,
                        next_attempt_at = clock_timestamp() + make_interval(secs => $6),
                        lease_owner = NULL, lease_until = NULL, updated_at = clock_timestamp()
                    FROM before
                    WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3
                      AND {SERVING}
                    RETURNING app, hub_id, user_id, prev_state""",
                lease.portal_id,
                lease.epoch,
                lease.owner,
                None if state is None else state.value,
                failure_class,
                retry_in,
            )
            if row is not None and state is not None and row["prev_state"] != state.value:
                key = key_of(row)
                await insert_event(conn, f"portal.{state.value}", key, {"class": failure_class})
            return row is not None

    async def release_lease(self, lease: Lease) -> None:
        await self._db.execute(
            """UPDATE portals SET lease_owner = NULL, lease_until = NULL
               WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3""",
            lease.portal_id,
            lease.epoch,
            lease.owner,
        )
