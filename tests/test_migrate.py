"""Migrations on a real PostgreSQL: a migration that needs a busy table's lock gives up
after ``lock_timeout`` and tries again (readers of that table are not queued behind it for
as long as a long transaction lasts), and 0016's checks on ``portals`` scan nothing."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import asyncpg
import pytest

from broker.adapters.postgres.migrate import SCHEMA_MIGRATIONS, apply, available, migrate
from broker.dev.stack import BackendUrls
from broker.errors import FatalError
from tests.helpers import admin_sql, database_named

PRIVATE_APPS = 16  # the migration that alters portals


@pytest.fixture
def empty_database(backends: BackendUrls) -> Iterator[str]:
    """A database of this test's own with no migration applied."""
    name = f"m_{secrets.token_hex(6)}"
    asyncio.run(admin_sql(backends.database_url, f"CREATE DATABASE {name}"))
    yield database_named(backends.database_url, name)
    asyncio.run(admin_sql(backends.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def _migrated_up_to(url: str, version: int) -> None:
    """Every migration before ``version`` applied, as ``migrate`` would have."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA_MIGRATIONS)
        for m in available():
            if m.version < version:
                await apply(conn, m)
    finally:
        await conn.close()


async def _waiting_for_portals(conn: asyncpg.Connection) -> None:
    """Until a lock request on portals waits (the migration's)."""
    for _ in range(1000):
        if await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'portals'::regclass"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing waited for portals' lock")


def test_a_migration_behind_a_long_transaction_gives_way_then_applies(
    empty_database: str,
) -> None:
    async def run() -> None:
        await _migrated_up_to(empty_database, PRIVATE_APPS)
        holder, reader, runner = [await asyncpg.connect(empty_database) for _ in range(3)]
        try:
            # A long transaction that read portals: 0016 cannot have its lock meanwhile.
            long_tx = holder.transaction()
            await long_tx.start()
            await holder.fetch("SELECT * FROM portals LIMIT 1")
            with pytest.raises(FatalError) as gave_up:
                await asyncio.wait_for(migrate(runner, lock_timeout=0.2, attempts=2), 10)
            assert gave_up.value.code == "migration_lock_timeout"
            assert await runner.fetchval("SELECT max(version) FROM schema_migrations") == 15

            # Tried again and again while the transaction lasts: a reader that arrives
            # meanwhile is served (it queued behind one 0.2 s wait at most, not for as long as
            # the long transaction lasts).
            migrating = asyncio.create_task(migrate(runner, lock_timeout=0.2, attempts=50))
            await _waiting_for_portals(holder)
            await reader.execute("SET lock_timeout = '5s'")
            assert await reader.fetchval("SELECT count(*) FROM portals") == 0
            await long_tx.commit()
            applied = await asyncio.wait_for(migrating, 30)
            assert [m.version for m in applied] == [
                m.version for m in available() if m.version >= PRIVATE_APPS
            ]
        finally:
            for conn in (holder, reader, runner):
                await conn.close()

    asyncio.run(run())


def test_the_checks_on_portals_are_not_validated_under_the_lock(empty_database: str) -> None:
    """An inline CHECK (or a validated constraint) scans the whole table while 0016 holds
    ACCESS EXCLUSIVE on it; NOT VALID ones do not (operators may VALIDATE them online)."""

    async def run() -> dict[str, bool]:
        conn = await asyncpg.connect(empty_database)
        try:
            await migrate(conn)
            rows = await conn.fetch(
                "SELECT conname, convalidated FROM pg_constraint "
                "WHERE conrelid = 'portals'::regclass AND contype = 'c' "
                "AND pg_get_constraintdef(oid) LIKE '%token_kind%'"
            )
            for row in rows:  # the online step the migration's comment documents
                await conn.execute(f"ALTER TABLE portals VALIDATE CONSTRAINT {row['conname']}")
            return {row["conname"]: row["convalidated"] for row in rows}
        finally:
            await conn.close()

    checks = asyncio.run(run())
    assert checks == {"portals_token_kind": False, "portals_private_app_static": False}
