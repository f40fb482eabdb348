"""Apps, portals and the token journal in PostgreSQL (implements ``PortalRepository``).

Every expiry and lease decision compares against ``clock_timestamp()``: the database clock
is the one clock all replicas share.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from broker.adapters.postgres.apps import AppRows
from broker.adapters.postgres.leases import LeaseRows
from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.private_apps import PrivateAppRows
from broker.adapters.postgres.revocations import RevocationRows
from broker.adapters.postgres.rewrap import RewrapRows
from broker.adapters.postgres.rows import (
    IDENTITY,
    PORTAL_COLUMNS,
    SERVING,
    insert_event,
    key_args,
    key_of,
    portal_of,
)
from broker.core.models import PRIVATE_APP, PortalKey, PortalRecord, PortalState
from broker.core.ports import EncryptedGrant, PendingRevocation, RevokedPortal, StoppedPortals


class PostgresPortals(AppRows, LeaseRows, RevocationRows, RewrapRows, PrivateAppRows):
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- portals --------------------------------------------------------------------------
    async def get_portal(self, key: PortalKey) -> PortalRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {PORTAL_COLUMNS} FROM portals WHERE {IDENTITY}", *key_args(key)
        )
        return None if row is None else portal_of(row)

    async def get_portals(self, keys: Sequence[PortalKey]) -> list[PortalRecord]:
        if not keys:
            return []
        rows = await self._db.fetch(
            f"""SELECT {PORTAL_COLUMNS} FROM portals
                JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS k (a, h, u)
                  ON app = k.a AND hub_id = k.h AND COALESCE(user_id, 0) = COALESCE(k.u, 0)""",
            [k.app for k in keys],
            [k.hub_id for k in keys],
            [k.user_id for k in keys],
        )
        return [portal_of(r) for r in rows]

    async def db_now(self) -> datetime:
        now: datetime = await self._db.fetchval("SELECT clock_timestamp()")
        return now

    async def list_portals(
        self, *, app: str | None = None, state: PortalState | None = None, limit: int = 100
    ) -> list[PortalRecord]:
        rows = await self._db.fetch(
            f"""SELECT {PORTAL_COLUMNS} FROM portals
                WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR state = $2)
                ORDER BY app, hub_id, user_id NULLS FIRST LIMIT $3""",
            app,
            None if state is None else state.value,
            limit,
        )
        return [portal_of(r) for r in rows]

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
                    RETURNING {PORTAL_COLUMNS}""",
                *key_args(key),
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
            await insert_event(conn, "portal.installed", key, {"scopes": list(scopes)})
            return portal_of(row)

    async def stopped_since(self, since: datetime | None) -> StoppedPortals:
        now: datetime = await self._db.fetchval("SELECT clock_timestamp()")
        if since is None:
            return StoppedPortals([], now)
        # The window overlaps the previous one by 5 s: a row stamped just before the last
        # poll but committed after it is still seen (invalidating twice is harmless).
        rows = await self._db.fetch(
            f"""SELECT app, hub_id, user_id FROM portals
                WHERE updated_at > $1::timestamptz - interval '5 seconds' AND updated_at <= $2
                  AND (NOT ({SERVING}) OR token_kind = 'private_app')""",
            since,
            now,
        )
        return StoppedPortals([key_of(r) for r in rows], now)

    async def revoke(self, key: PortalKey, *, reason: str, actor: str) -> RevokedPortal | None:
        """Revoke locally in one transaction: shred the ciphertexts (the portal's columns and
        its ``token_journal`` rows), keep the refresh token's ciphertext (and those of
        unapplied journal rows) in ``pending_revocations`` for the upstream revoke (a private
        app's portal: a row without one, for the destroy of its token in Vault). Returns
        the record and the pending revocation — None when already revoked — or None
        when the portal does not exist. The pending row starts claimed for 60 s: the caller
        tries at once; the journal's rows are due at once, for the retrier."""
        async with self._db.transaction() as conn:
            current = await conn.fetchrow(
                f"""SELECT id, state, refresh_ct, token_kind FROM portals
                    WHERE {IDENTITY} FOR UPDATE""",
                *key_args(key),
            )
            if current is None:
                return None
            pending: PendingRevocation | None = None
            # A private app's token is owed a destroy in Vault KV (no refresh token).
            if current["state"] != PortalState.REVOKED and (
                current["refresh_ct"] is not None or current["token_kind"] == PRIVATE_APP
            ):
                pending_id = await conn.fetchval(
                    """INSERT INTO pending_revocations
                           (app, hub_id, user_id, refresh_ct, next_attempt_at)
                       VALUES ($1, $2, $3, $4, clock_timestamp() + interval '60 seconds')
                       RETURNING id""",
                    *key_args(key),
                    current["refresh_ct"],
                )
                pending = PendingRevocation(pending_id, key, current["refresh_ct"], attempts=0)
            row = await conn.fetchrow(
                f"""UPDATE portals SET
                        state = 'revoked', refresh_ct = NULL, access_ct = NULL,
                        access_expires_at = NULL, refresh_after = NULL,
                        version = version + CASE WHEN state = 'revoked' THEN 0 ELSE 1 END,
                        revoked_at = COALESCE(revoked_at, clock_timestamp()),
                        lease_owner = NULL, lease_until = NULL,
                        updated_at = clock_timestamp()
                    WHERE {IDENTITY}
                    RETURNING {PORTAL_COLUMNS}""",
                *key_args(key),
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
                *key_args(key),
                current["id"],
            )
            if current["state"] != PortalState.REVOKED:
                await insert_event(conn, "portal.revoked", key, {"reason": reason, "actor": actor})
            return RevokedPortal(portal_of(row), pending)

    async def set_state(
        self, key: PortalKey, state: PortalState, *, allowed_from: Sequence[PortalState]
    ) -> PortalRecord | None:
        """Move a portal between operator states; None when its state does not allow it."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                f"""UPDATE portals SET state = $4, updated_at = clock_timestamp()
                    WHERE {IDENTITY} AND state = ANY($5::text[])
                    RETURNING {PORTAL_COLUMNS}""",
                *key_args(key),
                state.value,
                [s.value for s in allowed_from],
            )
            if row is None:
                return None
            await insert_event(conn, f"portal.{state.value}", key, {})
            return portal_of(row)

    async def flag(self, key: PortalKey, error_code: str) -> None:
        async with self._db.transaction() as conn:
            changed = await conn.fetchval(
                f"""UPDATE portals SET last_error = $4, updated_at = clock_timestamp()
                    WHERE {IDENTITY} AND last_error IS DISTINCT FROM $4 RETURNING id""",
                *key_args(key),
                error_code,
            )
            if changed is not None:
                await insert_event(conn, "portal.flagged", key, {"error": error_code})

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._db.fetch("SELECT state, count(*) AS n FROM portals GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    async def ping(self) -> None:
        await self._db.fetchval("SELECT 1")
