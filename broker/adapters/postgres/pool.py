"""The asyncpg pool, with every call bounded and every connection failure mapped to
:class:`~broker.errors.DatabaseError` (SQL errors are bugs and propagate unchanged)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from broker.errors import DatabaseError

# Failures that mean "the database is not reachable right now", not "our SQL is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    # A failover in progress: no host of a multi-host DSN is read-write yet, or a session
    # still reaches a server that turned read-only (a demoted primary behind a moved VIP).
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    asyncpg.ReadOnlySQLTransactionError,
)


_EXPIRING: set[asyncio.Task[None]] = set()


@contextmanager
def _guarded(pool: asyncpg.Pool | None = None) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        if pool is not None and isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            # target_session_attrs is checked only when a connection is made: replace the
            # pool's connections, or every query on them keeps reaching the read-only server.
            task = asyncio.get_running_loop().create_task(pool.expire_connections())
            _EXPIRING.add(task)  # a reference until it is done
            task.add_done_callback(_EXPIRING.discard)
        raise DatabaseError(f"PostgreSQL unavailable ({type(exc).__name__})") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary format (a version byte, then the JSON text), so COPY can carry jsonb too.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + json.dumps(value).encode(),
        decoder=lambda data: json.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset when a connection comes back: none. asyncpg's default sends a reset
    query (unlock advisory locks, RESET ALL, ...) on every release, a second round trip for
    every one-statement query. ``fetch``/``execute``/``transaction`` leave no session state
    (asyncpg still rolls back a transaction left open); :meth:`Database.connection`, the one
    way to use a session, resets it on the way out."""


class Database:
    """A thin, typed wrapper over one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        password: Callable[[], str] | None = None,
    ) -> Database:
        """``password``, when given, is asked for on every new connection (a password
        rotated in a secret file is used by the next connection, without a restart)."""
        with _guarded():
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                command_timeout=timeout,
                init=_init_connection,
                reset=_no_session_reset,
                server_settings={"application_name": "hubspot-token-broker"},
            )
        return cls(pool, timeout)

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), timeout=self._timeout)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        with _guarded(self._pool):
            return await self._pool.fetch(query, *args, timeout=self._timeout)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        with _guarded(self._pool):
            return await self._pool.fetchrow(query, *args, timeout=self._timeout)

    async def fetchval(self, query: str, *args: Any) -> Any:
        with _guarded(self._pool):
            return await self._pool.fetchval(query, *args, timeout=self._timeout)

    async def execute(self, query: str, *args: Any) -> str:
        with _guarded(self._pool):
            return await self._pool.execute(query, *args, timeout=self._timeout)

    async def copy_records(
        self, table: str, columns: list[str], records: list[tuple[Any, ...]]
    ) -> None:
        """COPY rows in (far cheaper per row than INSERT for batches)."""
        with _guarded(self._pool):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                await conn.copy_records_to_table(
                    table, records=records, columns=columns, timeout=self._timeout
                )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A connection inside a transaction; connection failures become DatabaseError."""
        with _guarded(self._pool):
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A connection for session state (an advisory lock): reset when it goes back (its
        session locks released), or closed when the reset fails, so no session state ever
        returns to the pool."""
        with _guarded(self._pool):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                try:
                    yield conn
                finally:
                    if not conn.is_closed():  # a broken one is dropped on release anyway
                        try:
                            await conn.reset(timeout=self._timeout)
                        except BaseException:
                            conn.terminate()
                            raise
