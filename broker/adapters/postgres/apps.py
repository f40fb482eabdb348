"""Apps in PostgreSQL: their settings, retirement and refresh pauses (part of
``PostgresPortals``)."""

from __future__ import annotations

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import app_of
from broker.core.models import App


class AppRows:
    _db: Database

    async def get_app(self, slug: str) -> App | None:
        row = await self._db.fetchrow("SELECT * FROM apps WHERE slug = $1", slug)
        return None if row is None else app_of(row)

    async def list_apps(self) -> list[App]:
        return [app_of(r) for r in await self._db.fetch("SELECT * FROM apps ORDER BY slug")]

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
        return None if row is None else app_of(row)

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
