"""Signing-key retirements and install links in PostgreSQL (implements ``KeySchedule`` and
``InstallLinkStore``). No key material and no link token is ever stored here."""

from __future__ import annotations

import asyncpg

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import from_row
from broker.core.models import InstallLinkRecord
from broker.core.ports import Retirement


class PostgresKeySchedule:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def retire_below(
        self, purpose: str, version: int, *, overlap_seconds: float, actor: str
    ) -> None:
        # Every version below the new one that is not retiring yet retires after the overlap
        # (database clock); one retiring sooner keeps its earlier time.
        await self._db.execute(
            """INSERT INTO signing_key_retirements (purpose, version, retires_at, retired_by)
               SELECT $1, v, clock_timestamp() + make_interval(secs => $3), $4
                 FROM generate_series(1, $2 - 1) AS v
               ON CONFLICT (purpose, version) DO UPDATE
                  SET retires_at = LEAST(signing_key_retirements.retires_at,
                                         EXCLUDED.retires_at)""",
            purpose,
            version,
            overlap_seconds,
            actor,
        )

    async def retired(self, purpose: str, version: int) -> bool:
        found = await self._db.fetchval(
            """SELECT retires_at <= clock_timestamp() FROM signing_key_retirements
                WHERE purpose = $1 AND version = $2""",
            purpose,
            version,
        )
        return found is True

    async def retirements(self) -> list[Retirement]:
        rows = await self._db.fetch(
            "SELECT purpose, version, retires_at FROM signing_key_retirements"
        )
        return [Retirement(r["purpose"], r["version"], r["retires_at"]) for r in rows]


def _link(row: asyncpg.Record) -> InstallLinkRecord:
    return from_row(InstallLinkRecord, row)


class PostgresInstallLinks:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, link: InstallLinkRecord) -> None:
        await self._db.execute(
            """INSERT INTO install_links (id, app, hub_id, return_to, created_at, created_by,
                                          expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            link.id,
            link.app,
            link.hub_id,
            link.return_to,
            link.created_at,
            link.created_by,
            link.expires_at,
        )

    async def get(self, link_id: str) -> InstallLinkRecord | None:
        row = await self._db.fetchrow("SELECT * FROM install_links WHERE id = $1", link_id)
        return None if row is None else _link(row)

    async def find(self, *, app: str | None, include_inactive: bool) -> list[InstallLinkRecord]:
        rows = await self._db.fetch(
            """SELECT * FROM install_links
                WHERE ($1::text IS NULL OR app = $1)
                  AND ($2 OR (revoked_at IS NULL AND expires_at > clock_timestamp()))
                ORDER BY created_at DESC, id
                LIMIT 1000""",
            app,
            include_inactive,
        )
        return [_link(r) for r in rows]

    async def revoke(self, link_id: str, *, actor: str) -> InstallLinkRecord | None:
        row = await self._db.fetchrow(
            """UPDATE install_links
                  SET revoked_at = COALESCE(revoked_at, clock_timestamp()),
                      revoked_by = COALESCE(revoked_by, $2)
                WHERE id = $1
            RETURNING *""",
            link_id,
            actor,
        )
        return None if row is None else _link(row)
