"""Versioned SQL migrations shipped in the package, applied by ``broker migrate``.

Safe when several replicas start at once: the whole run holds a transaction-scoped advisory
lock, so one replica applies and the others wait, then find nothing left to do. Each
migration's checksum is recorded; an applied file that changed afterwards is an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

from broker.errors import FatalError

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# Any constant shared by every replica: "htb-migrate" as a 63-bit integer.
_LOCK_ID = int.from_bytes(hashlib.sha256(b"htb-migrate").digest()[:8], "big") >> 1


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    found = []
    for entry in resources.files("broker.adapters.postgres").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: Connection) -> list[Migration]:
    """Apply pending migrations in one transaction; returns what was applied."""
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {row["version"]: row["checksum"] for row in rows}
        for migration in available():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise FatalError(
                        f"migration {migration.version} ({migration.name}) changed after it "
                        "was applied",
                        code="migration_checksum",
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration)
    return applied_now


async def pending(conn: Connection) -> list[Migration]:
    """Migrations not applied yet (for ``/readyz`` and ``check-config``)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: set[int] = set()
    if exists:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in available() if m.version not in done]
