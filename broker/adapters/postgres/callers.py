"""Caller identities in PostgreSQL (implements ``CallerRepository``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

import asyncpg

from broker.adapters.postgres.pool import Database
from broker.core.models import Caller, StoredCallerKey
from broker.core.ports import ChangedCallers
from broker.errors import Conflict


def _caller(row: asyncpg.Record) -> Caller:
    return Caller(
        id=row["id"],
        name=row["name"],
        roles=frozenset(row["roles"]),
        apps=None if row["apps"] is None else frozenset(row["apps"]),
        hub_ids=None if row["hub_ids"] is None else frozenset(row["hub_ids"]),
        expires_at=row["expires_at"],
        disabled=row["disabled_at"] is not None,
        rate_limit=row["rate_limit"],
        hubspot_paths=frozenset(row["hubspot_paths"]),
        gateway_weight=row["gateway_weight"],
    )


class PostgresCallers:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        caller: Caller,
        key_id: str | None,
        key_hash: str | None,
        expires_at: datetime | None,
        identity: tuple[str, str] | None = None,
    ) -> Caller:
        try:
            row = await self._db.fetchrow(
                """INSERT INTO callers (name, key_id, key_hash, roles, apps, hub_ids,
                                        expires_at, rate_limit, jwt_issuer, jwt_subject,
                                        hubspot_paths, gateway_weight)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *""",
                caller.name,
                key_id,
                key_hash,
                sorted(caller.roles),
                None if caller.apps is None else sorted(caller.apps),
                None if caller.hub_ids is None else sorted(caller.hub_ids),
                expires_at,
                caller.rate_limit,
                None if identity is None else identity[0],
                None if identity is None else identity[1],
                sorted(caller.hubspot_paths),
                caller.gateway_weight,
            )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(
                f"a caller named {caller.name!r} (or with that identity) exists",
                code="caller_exists",
            ) from exc
        assert row is not None  # INSERT .. RETURNING returns the row or raises
        return _caller(row)

    async def by_identity(self, issuer: str, subject: str) -> Caller | None:
        row = await self._db.fetchrow(
            "SELECT * FROM callers WHERE jwt_issuer = $1 AND jwt_subject = $2", issuer, subject
        )
        return None if row is None else _caller(row)

    async def by_name(self, name: str) -> Caller | None:
        row = await self._db.fetchrow("SELECT * FROM callers WHERE name = $1", name)
        return None if row is None else _caller(row)

    async def by_key_id(self, key_id: str) -> StoredCallerKey | None:
        row = await self._db.fetchrow(
            """SELECT *,
                   CASE WHEN key_id = $1 THEN key_hash ELSE previous_key_hash END AS hash,
                   CASE WHEN key_id = $1 THEN expires_at
                        ELSE LEAST(expires_at, previous_key_expires_at) END AS key_expires_at
               FROM callers
               WHERE key_id = $1
                  OR (previous_key_id = $1 AND previous_key_expires_at > clock_timestamp())""",
            key_id,
        )
        if row is None:
            return None
        return StoredCallerKey(_caller(row), row["hash"], row["key_expires_at"])

    async def rotate_key(
        self, name: str, key_id: str, key_hash: str, overlap_seconds: float
    ) -> Caller | None:
        row = await self._db.fetchrow(
            """UPDATE callers SET
                   previous_key_id = key_id, previous_key_hash = key_hash,
                   previous_key_expires_at = clock_timestamp() + make_interval(secs => $4),
                   key_id = $2, key_hash = $3
               WHERE name = $1 AND disabled_at IS NULL
               RETURNING *""",
            name,
            key_id,
            key_hash,
            overlap_seconds,
        )
        return None if row is None else _caller(row)

    async def set_gateway(
        self, name: str, hubspot_paths: Collection[str], gateway_weight: int
    ) -> Caller | None:
        row = await self._db.fetchrow(
            "UPDATE callers SET hubspot_paths = $2, gateway_weight = $3 WHERE name = $1 "
            "RETURNING *",
            name,
            sorted(hubspot_paths),
            gateway_weight,
        )
        return None if row is None else _caller(row)

    async def list(self) -> list[Caller]:
        return [_caller(r) for r in await self._db.fetch("SELECT * FROM callers ORDER BY name")]

    async def disable(self, name: str) -> int | None:
        caller_id: int | None = await self._db.fetchval(
            "UPDATE callers SET disabled_at = clock_timestamp() "
            "WHERE name = $1 AND disabled_at IS NULL RETURNING id",
            name,
        )
        return caller_id

    async def changed_since(self, since: datetime | None, known: Collection[int]) -> ChangedCallers:
        if since is None:
            now: datetime = await self._db.fetchval("SELECT clock_timestamp()")
            return ChangedCallers(set(), now)
        # The window overlaps the previous one by 5 s: a row stamped just before the last
        # poll but committed after it is still seen (invalidating twice is harmless).
        row = await self._db.fetchrow(
            """SELECT clock_timestamp() AS now,
                   ARRAY(SELECT id FROM callers
                         WHERE updated_at > $1::timestamptz - interval '5 seconds') AS changed,
                   ARRAY(SELECT k FROM unnest($2::bigint[]) AS k
                         WHERE NOT EXISTS (SELECT 1 FROM callers WHERE id = k)) AS gone""",
            since,
            sorted(known),
        )
        assert row is not None  # a SELECT without FROM returns one row
        return ChangedCallers({*row["changed"], *row["gone"]}, row["now"])

    async def touch(self, caller_ids: Sequence[int]) -> None:
        await self._db.execute(
            "UPDATE callers SET last_used_at = clock_timestamp() WHERE id = ANY($1::bigint[])",
            list(caller_ids),
        )
