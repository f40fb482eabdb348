"""Private apps in PostgreSQL: the app bound to its hub and its one portal row (part of
``PostgresPortals``). The token itself is in Vault (``broker.adapters.vault.kv``)."""

from __future__ import annotations

from collections.abc import Sequence

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import (
    IDENTITY,
    PORTAL_COLUMNS,
    app_of,
    insert_event,
    key_args,
    portal_of,
)
from broker.core.models import App, PortalKey, PortalRecord


class PrivateAppRows:
    _db: Database

    async def save_private_app(self, slug: str, hub_id: int) -> App | None:
        # No client id, secret or redirect URI: HubSpot's private apps have none. The no-op
        # update returns the row only when it is already this hub's private app.
        row = await self._db.fetchrow(
            """INSERT INTO apps (slug, client_id, redirect_uri, kind, private_hub_id)
               VALUES ($1, '', '', 'private', $2)
               ON CONFLICT (slug) DO UPDATE SET updated_at = clock_timestamp()
                   WHERE apps.kind = 'private' AND apps.private_hub_id = $2
               RETURNING *""",
            slug,
            hub_id,
        )
        return None if row is None else app_of(row)

    async def put_private_portal(
        self, key: PortalKey, *, scopes: Sequence[str], fingerprint: str | None, actor: str
    ) -> PortalRecord:
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                f"""INSERT INTO portals (app, hub_id, user_id, installed_by, scopes, token_kind,
                                         access_fp, refreshed_at)
                    VALUES ($1, $2, $3, $4, $5, 'private_app', $6, clock_timestamp())
                    ON CONFLICT (app, hub_id, COALESCE(user_id, 0)) DO UPDATE SET
                        installed_by = EXCLUDED.installed_by, scopes = EXCLUDED.scopes,
                        -- As a re-install: serving again, but an operator's quarantine stays.
                        state = CASE WHEN portals.state = 'quarantined' THEN 'quarantined'
                                     ELSE 'active' END,
                        access_fp = EXCLUDED.access_fp, previous_expires_at = NULL,
                        version = portals.version + 1, failure_count = 0, last_error = NULL,
                        refreshed_at = clock_timestamp(), installed_at = clock_timestamp(),
                        updated_at = clock_timestamp(), revoked_at = NULL
                    WHERE portals.token_kind = 'private_app'
                    RETURNING {PORTAL_COLUMNS}""",
                *key_args(key),
                actor,
                list(scopes),
                fingerprint,
            )
            # The app is private (checked before), so its rows are private_app rows.
            assert row is not None
            # A destroy still owed from a revocation would now destroy the token just added.
            await conn.execute(
                """DELETE FROM pending_revocations
                   WHERE app = $1 AND hub_id = $2 AND refresh_ct IS NULL""",
                key.app,
                key.hub_id,
            )
            await insert_event(conn, "portal.installed", key, {"scopes": list(scopes)})
            return portal_of(row)

    async def rotate_private_portal(
        self, key: PortalKey, *, fingerprint: str | None, old_expires_in: int | None
    ) -> PortalRecord | None:
        # updated_at moves: the invalidation poll (stopped_since) picks the portal up on a
        # replica that missed the message.
        row = await self._db.fetchrow(
            f"""UPDATE portals SET
                    access_fp = $4, version = version + 1,
                    previous_expires_at = clock_timestamp() + make_interval(secs => $5),
                    refreshed_at = clock_timestamp(), updated_at = clock_timestamp()
                WHERE {IDENTITY} AND token_kind = 'private_app' AND state <> 'revoked'
                RETURNING {PORTAL_COLUMNS}""",
            *key_args(key),
            fingerprint,
            old_expires_in,
        )
        return None if row is None else portal_of(row)
