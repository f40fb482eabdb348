"""Versioned SQL migrations shipped in the package, applied by ``broker migrate``.

Safe when several replicas start at once: the whole run holds a transaction-scoped advisory
lock, so one replica applies and the others wait, then find nothing left to do. Each
migration's checksum is recorded; an applied file that changed afterwards is an error.

A migration that alters a busy table needs its ACCESS EXCLUSIVE lock, and while it waits for
a long transaction every new reader of that table queues behind it. So the run waits at most
``lock_timeout`` seconds for a table lock (not for the advisory lock: other replicas' runs
are waited for), then rolls back, lets the queue drain and tries again, ``attempts`` times.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from broker.errors import FatalError

log = structlog.get_logger(__name__)

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# Any constant shared by every replica: "htb-migrate" as a 63-bit integer.
_LOCK_ID = int.from_bytes(hashlib.sha256(b"htb-migrate").digest()[:8], "big") >> 1
#: Longest wait for a table's lock (readers of that table queue behind the wait), and how
#: many times the run is tried before it gives up.
LOCK_TIMEOUT = 10.0
LOCK_ATTEMPTS = 5


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


async def migrate(
    conn: Connection, *, lock_timeout: float = LOCK_TIMEOUT, attempts: int = LOCK_ATTEMPTS
) -> list[Migration]:
    """Apply pending migrations in one transaction; returns what was applied. A table lock
    not granted within ``lock_timeout`` seconds rolls the run back; it is tried ``attempts``
    times, ``lock_timeout`` apart."""
    for attempt in range(1, attempts + 1):
        try:
            return await _migrate_once(conn, lock_timeout)
        except asyncpg.LockNotAvailableError:
            log.warning(
                "migrate.lock_timeout",
                attempt=attempt,
                attempts=attempts,
                lock_timeout_seconds=lock_timeout,
            )
            if attempt < attempts:
                await asyncio.sleep(lock_timeout)
    raise FatalError(
        f"migrations waited {attempts} times {lock_timeout:g} s for a table lock: a long "
        "transaction holds it (see pg_stat_activity)",
        code="migration_lock_timeout",
    )


#: The table of applied migrations (created by the first run).
SCHEMA_MIGRATIONS = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""


async def apply(conn: Connection, migration: Migration) -> None:
    """Runs ``migration`` and records it (inside the caller's transaction)."""
    await conn.execute(migration.sql)
    await conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        migration.version,
        migration.name,
        migration.checksum,
    )


async def _migrate_once(conn: Connection, lock_timeout: float) -> list[Migration]:
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        # After the advisory lock: another replica's run is waited for as long as it takes.
        await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
        await conn.execute(SCHEMA_MIGRATIONS)
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
            await apply(conn, migration)
            applied_now.append(migration)
    return applied_now


async def pending(conn: Connection) -> list[Migration]:
    """Migrations not applied yet (for ``/readyz`` and ``check-config``)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: set[int] = set()
    if exists:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in available() if m.version not in done]
