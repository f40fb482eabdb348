"""Apps, portals and the token journal in PostgreSQL (implements ``PortalRepository``).

Every expiry and lease decision compares against ``clock_timestamp()``: the database clock
is the one clock all replicas share.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from broker.adapters.postgres.pool import Database
from broker.core.models import App, Intent, Lease, PortalKey, PortalRecord, PortalState
from broker.core.ports import EncryptedGrant

_PORTAL_COLUMNS = """
    id, app, hub_id, user_id, hub_domain, scopes, state, refresh_ct, access_ct,
    access_expires_at, version, lease_epoch, failure_count, last_error, next_attempt_at,
    lease_until, installed_by, installed_at, updated_at, refreshed_at, revoked_at, access_fp,
    clock_timestamp() AS db_now
"""
# Matches the unique index portals_identity.
_IDENTITY = "app = $1 AND hub_id = $2 AND COALESCE(user_id, 0) = COALESCE($3::bigint, 0)"
_SERVING = "state IN ('active', 'refresh_failing')"
#: What a claim returns to build its :class:`Lease` (``_lease``).
_LEASE_COLUMNS = """id, lease_epoch, version, refresh_ct, failure_count, lease_until,
                    clock_timestamp() AS now"""


def _app(row: asyncpg.Record) -> App:
    return App(
        slug=row["slug"],
        client_id=row["client_id"],
        redirect_uri=row["redirect_uri"],
        scopes=tuple(row["scopes"]),
        optional_scopes=tuple(row["optional_scopes"]),
        api_version=row["api_version"],
        allow_marketplace_installs=row["allow_marketplace_installs"],
        user_level=row["user_level"],
        retired_at=row["retired_at"],
    )


def _portal(row: asyncpg.Record) -> PortalRecord:
    return PortalRecord(
        id=row["id"],
        key=PortalKey(row["app"], row["hub_id"], row["user_id"]),
        hub_domain=row["hub_domain"],
        scopes=tuple(row["scopes"]),
        state=PortalState(row["state"]),
        installed_by=row["installed_by"],
        refresh_ct=row["refresh_ct"],
        access_ct=row["access_ct"],
        access_expires_at=row["access_expires_at"],
        version=row["version"],
        lease_epoch=row["lease_epoch"],
        failure_count=row["failure_count"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"],
        lease_until=row["lease_until"],
        installed_at=row["installed_at"],
        updated_at=row["updated_at"],
        refreshed_at=row["refreshed_at"],
        revoked_at=row["revoked_at"],
        db_now=row["db_now"],
        access_fp=row["access_fp"],
    )


def _lease(row: asyncpg.Record, owner: str) -> Lease:
    return Lease(
        portal_id=row["id"],
        owner=owner,
        epoch=row["lease_epoch"],
        version=row["version"],
        refresh_ct=row["refresh_ct"],
        failures=row["failure_count"],
        seconds=(row["lease_until"] - row["now"]).total_seconds(),
        db_now=row["now"],
    )


def _key_args(key: PortalKey) -> tuple[Any, ...]:
    return (key.app, key.hub_id, key.user_id)


async def _event(
    conn: asyncpg.pool.PoolConnectionProxy, kind: str, key: PortalKey, payload: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO events (type, app, hub_id, user_id, payload) VALUES ($1, $2, $3, $4, $5)",
        kind,
        *_key_args(key),
        payload,
    )


#: The fenced commit: the lease that read the row still holds it.
_LEASE_HOLDS = "lease_epoch = $6 AND lease_owner = $7 AND " + _SERVING
#: A journaled answer applied outside its lease: only while the row is still at the version
#: the call started from (no newer token was stored since), nobody holds a lease, and the
#: state is one a refresh may change (never revoked or quarantined).
_STILL_NEWEST = """version = $6 AND state IN ('active', 'refresh_failing', 'needs_reauth')
    AND (lease_until IS NULL OR lease_until <= clock_timestamp())"""


async def _apply(
    conn: asyncpg.pool.PoolConnectionProxy,
    condition: str,
    portal_id: int,
    fence: tuple[Any, ...],
    grant: EncryptedGrant,
    journal_id: int,
) -> PortalRecord | None:
    """Store a refreshed grant if ``condition`` holds (its ``$6``, ``$7`` are ``fence``),
    mark its journal row applied, and note a recovery. The CTE locks the row and reads the
    state before the write, for the event."""
    row = await conn.fetchrow(
        f"""WITH before AS (
                SELECT state AS prev_state FROM portals WHERE id = $1 FOR UPDATE)
            UPDATE portals SET
                refresh_ct = $2, access_ct = $3, access_expires_at = $4,
                access_fp = ${6 + len(fence)},
                refresh_after = $5, version = version + 1, state = 'active',
                failure_count = 0, last_error = NULL, next_attempt_at = NULL,
                lease_owner = NULL, lease_until = NULL,
                refreshed_at = clock_timestamp(), updated_at = clock_timestamp()
            FROM before
            WHERE id = $1 AND {condition}
            RETURNING {_PORTAL_COLUMNS}, prev_state""",
        portal_id,
        grant.refresh_ct,
        grant.access_ct,
        grant.expires_at,
        grant.refresh_after,
        *fence,
        grant.access_fp,
    )
    if row is None:
        return None
    await _mark_applied(conn, journal_id)
    record = _portal(row)
    if row["prev_state"] != PortalState.ACTIVE:
        healed = row["prev_state"] == PortalState.NEEDS_REAUTH
        await _event(conn, "portal.recovered", record.key, {"healed": healed} if healed else {})
    return record


async def _mark_applied(conn: asyncpg.pool.PoolConnectionProxy, journal_id: int) -> None:
    await conn.execute(
        "UPDATE token_journal SET applied_at = clock_timestamp() WHERE id = $1", journal_id
    )


class PostgresPortals:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- apps -----------------------------------------------------------------------------
    async def get_app(self, slug: str) -> App | None:
        row = await self._db.fetchrow("SELECT * FROM apps WHERE slug = $1", slug)
        return None if row is None else _app(row)

    async def list_apps(self) -> list[App]:
        return [_app(r) for r in await self._db.fetch("SELECT * FROM apps ORDER BY slug")]

    async def save_app(self, app: App) -> bool:
        inserted: bool = await self._db.fetchval(
            """INSERT INTO apps (slug, client_id, redirect_uri, scopes, optional_scopes,
                                 api_version, allow_marketplace_installs, user_level)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (slug) DO UPDATE SET
                   client_id = EXCLUDED.client_id, redirect_uri = EXCLUDED.redirect_uri,
                   scopes = EXCLUDED.scopes, optional_scopes = EXCLUDED.optional_scopes,
                   api_version = EXCLUDED.api_version,
                   allow_marketplace_installs = EXCLUDED.allow_marketplace_installs,
                   user_level = EXCLUDED.user_level, updated_at = clock_timestamp()
               RETURNING xmax = 0""",
            app.slug,
            app.client_id,
            app.redirect_uri,
            list(app.scopes),
            list(app.optional_scopes),
            app.api_version,
            app.allow_marketplace_installs,
            app.user_level,
        )
        return inserted

    async def retire_app(self, slug: str, *, retired: bool, actor: str) -> App | None:
        row = await self._db.fetchrow(
            """UPDATE apps SET
                   retired_at = CASE WHEN $2 THEN COALESCE(retired_at, clock_timestamp()) END,
                   retired_by = CASE WHEN $2 THEN COALESCE(retired_by, $3) END,
                   updated_at = clock_timestamp()
               WHERE slug = $1 RETURNING *""",
            slug,
            retired,
            actor,
        )
        return None if row is None else _app(row)

    # --- portals --------------------------------------------------------------------------
    async def get_portal(self, key: PortalKey) -> PortalRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {_PORTAL_COLUMNS} FROM portals WHERE {_IDENTITY}", *_key_args(key)
        )
        return None if row is None else _portal(row)

    async def get_portals(self, keys: Sequence[PortalKey]) -> list[PortalRecord]:
        if not keys:
            return []
        rows = await self._db.fetch(
            f"""SELECT {_PORTAL_COLUMNS} FROM portals
                JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS k (a, h, u)
                  ON app = k.a AND hub_id = k.h AND COALESCE(user_id, 0) = COALESCE(k.u, 0)""",
            [k.app for k in keys],
            [k.hub_id for k in keys],
            [k.user_id for k in keys],
        )
        return [_portal(r) for r in rows]

    async def db_now(self) -> datetime:
        now: datetime = await self._db.fetchval("SELECT clock_timestamp()")
        return now

    async def list_portals(
        self, *, app: str | None = None, state: PortalState | None = None, limit: int = 100
    ) -> list[PortalRecord]:
        rows = await self._db.fetch(
            f"""SELECT {_PORTAL_COLUMNS} FROM portals
                WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR state = $2)
                ORDER BY app, hub_id, user_id NULLS FIRST LIMIT $3""",
            app,
            None if state is None else state.value,
            limit,
        )
        return [_portal(r) for r in rows]

    async def install(
        self,
        key: PortalKey,
        grant: EncryptedGrant,
        *,
        hub_domain: str | None,
        scopes: Sequence[str],
        actor: str,
    ) -> PortalRecord:
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                f"""INSERT INTO portals (app, hub_id, user_id, hub_domain, installed_by, scopes,
                                         refresh_ct, access_ct, access_expires_at, refresh_after,
                                         access_fp)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                    ON CONFLICT (app, hub_id, COALESCE(user_id, 0)) DO UPDATE SET
                        hub_domain = EXCLUDED.hub_domain, installed_by = EXCLUDED.installed_by,
                        scopes = EXCLUDED.scopes,
                        -- A re-install connects the grant again (needs_reauth, revoked through
                        -- an operator's link) but never lifts an operator's quarantine.
                        state = CASE WHEN portals.state = 'quarantined' THEN 'quarantined'
                                     ELSE 'active' END,
                        refresh_ct = EXCLUDED.refresh_ct, access_ct = EXCLUDED.access_ct,
                        access_expires_at = EXCLUDED.access_expires_at,
                        refresh_after = EXCLUDED.refresh_after,
                        access_fp = EXCLUDED.access_fp,
                        version = portals.version + 1,
                        lease_owner = NULL, lease_until = NULL,
                        failure_count = 0, last_error = NULL, next_attempt_at = NULL,
                        installed_at = clock_timestamp(), updated_at = clock_timestamp(),
                        revoked_at = NULL
                    RETURNING {_PORTAL_COLUMNS}""",
                *_key_args(key),
                hub_domain,
                actor,
                list(scopes),
                grant.refresh_ct,
                grant.access_ct,
                grant.expires_at,
                grant.refresh_after,
                grant.access_fp,
            )
            assert row is not None  # INSERT .. ON CONFLICT DO UPDATE always returns the row
            await _event(conn, "portal.installed", key, {"scopes": list(scopes)})
            return _portal(row)

    # --- the refresh lease ----------------------------------------------------------------
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
                WHERE id = $1 AND {_SERVING}
                  AND refresh_ct IS NOT NULL
                  AND (lease_until IS NULL OR lease_until <= clock_timestamp())
                  AND (access_expires_at IS NULL
                       OR access_expires_at < clock_timestamp() + make_interval(secs => $4))
                  AND ($5 OR next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
                RETURNING {_LEASE_COLUMNS}""",
            portal_id,
            owner,
            lease_seconds,
            min_ttl,
            ignore_backoff,
        )
        return None if row is None else _lease(row, owner)

    async def claim_due(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> list[tuple[PortalKey, Lease]]:
        """Leases for up to ``limit`` portals whose refresh time has come, oldest first.
        ``SKIP LOCKED``: replicas scanning at once split the work instead of queueing."""
        rows = await self._db.fetch(
            f"""WITH due AS (
                    SELECT id AS due_id FROM portals
                    WHERE {_SERVING} AND refresh_ct IS NOT NULL
                      AND refresh_after <= clock_timestamp()
                      AND (lease_until IS NULL OR lease_until <= clock_timestamp())
                      AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
                      AND app NOT IN (SELECT slug FROM apps
                                      WHERE paused_until > clock_timestamp())
                    ORDER BY refresh_after
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED)
                UPDATE portals p SET
                    lease_owner = $1, lease_epoch = p.lease_epoch + 1,
                    lease_until = clock_timestamp() + make_interval(secs => $3)
                FROM due WHERE p.id = due.due_id
                RETURNING p.app, p.hub_id, p.user_id, {_LEASE_COLUMNS}""",
            owner,
            limit,
            lease_seconds,
        )
        return [(PortalKey(r["app"], r["hub_id"], r["user_id"]), _lease(r, owner)) for r in rows]

    async def pause_app(self, slug: str, seconds: float, reason: str) -> None:
        """Stop proactive refreshes of every portal of an app for a while (portals untouched)."""
        async with self._db.transaction() as conn:
            # FOR UPDATE serializes concurrent pauses, so exactly one of them sees the app
            # unpaused and emits the event.
            before = await conn.fetchval(
                """WITH before AS (
                       SELECT slug, COALESCE(paused_until > clock_timestamp(), false) AS paused
                       FROM apps WHERE slug = $1 FOR UPDATE)
                   UPDATE apps SET
                       paused_until = clock_timestamp() + make_interval(secs => $2),
                       misconfigured_at = CASE WHEN $3 = 'app_misconfigured'
                           THEN clock_timestamp() ELSE misconfigured_at END
                   FROM before WHERE apps.slug = before.slug
                   RETURNING before.paused""",
                slug,
                seconds,
                reason,
            )
            if not before and reason == "app_misconfigured":
                await conn.execute(
                    "INSERT INTO events (type, app, payload) VALUES ('app.misconfigured', $1, $2)",
                    slug,
                    {"reason": reason},
                )

    async def stopped_since(self, since: datetime | None) -> tuple[list[PortalKey], datetime]:
        now: datetime = await self._db.fetchval("SELECT clock_timestamp()")
        if since is None:
            return [], now
        # The window overlaps the previous one by 5 s: a row stamped just before the last
        # poll but committed after it is still seen (invalidating twice is harmless).
        rows = await self._db.fetch(
            f"""SELECT app, hub_id, user_id FROM portals
                WHERE updated_at > $1::timestamptz - interval '5 seconds' AND updated_at <= $2
                  AND NOT ({_SERVING})""",
            since,
            now,
        )
        return [PortalKey(r["app"], r["hub_id"], r["user_id"]) for r in rows], now

    async def revoke(
        self, key: PortalKey, *, reason: str, actor: str
    ) -> tuple[PortalRecord, tuple[int, str] | None] | None:
        """Revoke locally in one transaction: shred the ciphertexts (the portal's columns and
        its ``token_journal`` rows), keep the refresh token's ciphertext (and those of
        unapplied journal rows) in ``pending_revocations`` for the upstream revoke. Returns
        the record and the pending (id, ciphertext) — None when already revoked — or None
        when the portal does not exist. The pending row starts claimed for 60 s: the caller
        tries at once; the journal's rows are due at once, for the retrier."""
        async with self._db.transaction() as conn:
            current = await conn.fetchrow(
                f"SELECT id, state, refresh_ct FROM portals WHERE {_IDENTITY} FOR UPDATE",
                *_key_args(key),
            )
            if current is None:
                return None
            pending: tuple[int, str] | None = None
            if current["state"] != PortalState.REVOKED and current["refresh_ct"] is not None:
                pending_id = await conn.fetchval(
                    """INSERT INTO pending_revocations
                           (app, hub_id, user_id, refresh_ct, next_attempt_at)
                       VALUES ($1, $2, $3, $4, clock_timestamp() + interval '60 seconds')
                       RETURNING id""",
                    *_key_args(key),
                    current["refresh_ct"],
                )
                pending = (pending_id, current["refresh_ct"])
            row = await conn.fetchrow(
                f"""UPDATE portals SET
                        state = 'revoked', refresh_ct = NULL, access_ct = NULL,
                        access_expires_at = NULL, refresh_after = NULL,
                        version = version + CASE WHEN state = 'revoked' THEN 0 ELSE 1 END,
                        revoked_at = COALESCE(revoked_at, clock_timestamp()),
                        lease_owner = NULL, lease_until = NULL,
                        updated_at = clock_timestamp()
                    WHERE {_IDENTITY}
                    RETURNING {_PORTAL_COLUMNS}""",
                *_key_args(key),
            )
            assert row is not None  # locked above
            # Journal rows hold the refresh token's ciphertext too (and HubSpot's refresh
            # tokens rarely rotate, so it is the live one): shred them with the portal. An
            # unapplied row may hold a newer, rotated token than the portal's: it is owed an
            # upstream revoke too, due now (HubSpot answers 200 for a token it no longer
            # knows). A stalled holder may still journal after this commit; the retention
            # sweep does the same for such rows (broker.core.retention).
            await conn.execute(
                """WITH gone AS (DELETE FROM token_journal WHERE portal_id = $4
                                 RETURNING refresh_ct, applied_at)
                   INSERT INTO pending_revocations (app, hub_id, user_id, refresh_ct)
                   SELECT $1::text, $2::bigint, $3::bigint, refresh_ct
                   FROM gone WHERE applied_at IS NULL""",
                *_key_args(key),
                current["id"],
            )
            if current["state"] != PortalState.REVOKED:
                await _event(conn, "portal.revoked", key, {"reason": reason, "actor": actor})
            return _portal(row), pending

    async def set_state(
        self, key: PortalKey, state: PortalState, *, allowed_from: Sequence[PortalState]
    ) -> PortalRecord | None:
        """Move a portal between operator states; None when its state does not allow it."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                f"""UPDATE portals SET state = $4, updated_at = clock_timestamp()
                    WHERE {_IDENTITY} AND state = ANY($5::text[])
                    RETURNING {_PORTAL_COLUMNS}""",
                *_key_args(key),
                state.value,
                [s.value for s in allowed_from],
            )
            if row is None:
                return None
            await _event(conn, f"portal.{state.value}", key, {})
            return _portal(row)

    async def due_revocations(self, limit: int) -> list[tuple[int, PortalKey, str, int]]:
        rows = await self._db.fetch(
            """UPDATE pending_revocations SET
                   next_attempt_at = clock_timestamp() + interval '60 seconds'
               WHERE id IN (SELECT id FROM pending_revocations
                            WHERE next_attempt_at <= clock_timestamp()
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               RETURNING id, app, hub_id, user_id, refresh_ct, attempts""",
            limit,
        )
        return [
            (
                r["id"],
                PortalKey(r["app"], r["hub_id"], r["user_id"]),
                r["refresh_ct"],
                r["attempts"],
            )
            for r in rows
        ]

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

    async def ciphertexts_below(
        self, version: int, *, after_id: int, limit: int
    ) -> list[tuple[str, int, PortalKey, str, str]]:
        """(table, row id, portal, column, ciphertext) of ciphertexts under a Transit key
        version older than ``version``, in (table, id) order from ``after_id``: the rewrap
        job walks them in batches and can resume anywhere."""
        rows = await self._db.fetch(
            """SELECT * FROM (
                   SELECT 'portals' AS tbl, id, app, hub_id, user_id, col, ct FROM portals,
                       LATERAL (VALUES ('refresh_ct', refresh_ct), ('access_ct', access_ct))
                       AS c(col, ct)
                   UNION ALL
                   SELECT 'token_journal', j.id, p.app, p.hub_id, p.user_id, col, ct
                   FROM token_journal j JOIN portals p ON p.id = j.portal_id,
                       LATERAL (VALUES ('refresh_ct', j.refresh_ct), ('access_ct', j.access_ct))
                       AS c(col, ct)
                   UNION ALL
                   SELECT 'pending_revocations', id, app, hub_id, user_id, 'refresh_ct',
                          refresh_ct FROM pending_revocations
               ) AS all_ct
               WHERE ct IS NOT NULL
                 AND split_part(ct, ':', 2) <> ''
                 AND substr(split_part(ct, ':', 2), 2)::int < $1
                 AND id > $2
               ORDER BY id, tbl, col
               LIMIT $3""",
            version,
            after_id,
            limit,
        )
        return [
            (r["tbl"], r["id"], PortalKey(r["app"], r["hub_id"], r["user_id"]), r["col"], r["ct"])
            for r in rows
        ]

    async def swap_ciphertext(
        self, table: str, row_id: int, column: str, old: str, new: str
    ) -> bool:
        """Compare-and-set: a row a refresh rewrote meanwhile is left alone."""
        if table not in ("portals", "token_journal", "pending_revocations") or column not in (
            "refresh_ct",
            "access_ct",
        ):
            raise ValueError(f"not a ciphertext column: {table}.{column}")
        status = await self._db.execute(
            f"UPDATE {table} SET {column} = $3 WHERE id = $1 AND {column} = $2",
            row_id,
            old,
            new,
        )
        return status != "UPDATE 0"

    async def flag(self, key: PortalKey, error_code: str) -> None:
        async with self._db.transaction() as conn:
            changed = await conn.fetchval(
                f"""UPDATE portals SET last_error = $4, updated_at = clock_timestamp()
                    WHERE {_IDENTITY} AND last_error IS DISTINCT FROM $4 RETURNING id""",
                *_key_args(key),
                error_code,
            )
            if changed is not None:
                await _event(conn, "portal.flagged", key, {"error": error_code})

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._db.fetch("SELECT state, count(*) AS n FROM portals GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

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
        async with self._db.transaction() as conn:
            fence = (lease.epoch, lease.owner)
            return await _apply(conn, _LEASE_HOLDS, lease.portal_id, fence, grant, journal_id)

    async def apply_late(
        self, lease: Lease, grant: EncryptedGrant, journal_id: int
    ) -> PortalRecord | None:
        async with self._db.transaction() as conn:
            fence = (lease.version,)
            return await _apply(conn, _STILL_NEWEST, lease.portal_id, fence, grant, journal_id)

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
            async with self._db.transaction() as conn:
                record = await _apply(
                    conn, _STILL_NEWEST, r["id"], (r["version"],), grant, r["journal_id"]
                )
            if record is not None:
                healed.append(record)
        return healed

    async def newer_journal_entry(self, lease: Lease) -> tuple[int, EncryptedGrant] | None:
        row = await self._db.fetchrow(
            """SELECT id, refresh_ct, access_ct, access_expires_at,
                      COALESCE(refresh_after, access_expires_at) AS refresh_after
               FROM token_journal
               WHERE portal_id = $1 AND applied_at IS NULL AND base_version >= $2
               ORDER BY id DESC LIMIT 1""",
            lease.portal_id,
            lease.version,
        )
        if row is None:
            return None
        return row["id"], EncryptedGrant(
            row["refresh_ct"], row["access_ct"], row["access_expires_at"], row["refresh_after"]
        )

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
                      AND {_SERVING}
                    RETURNING app, hub_id, user_id, prev_state""",
                lease.portal_id,
                lease.epoch,
                lease.owner,
                None if state is None else state.value,
                failure_class,
                retry_in,
            )
            if row is not None and state is not None and row["prev_state"] != state.value:
                key = PortalKey(row["app"], row["hub_id"], row["user_id"])
                await _event(conn, f"portal.{state.value}", key, {"class": failure_class})
            return row is not None

    async def release_lease(self, lease: Lease) -> None:
        await self._db.execute(
            """UPDATE portals SET lease_owner = NULL, lease_until = NULL
               WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3""",
            lease.portal_id,
            lease.epoch,
            lease.owner,
        )

    async def ping(self) -> None:
        await self._db.fetchval("SELECT 1")
