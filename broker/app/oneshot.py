"""One-off tasks on the backends, without serving: migrations, a retention sweep, and the
backend probes of ``broker check-config``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from broker.adapters.postgres.migrate import migrate, pending
from broker.adapters.postgres.pool import Database
from broker.adapters.redis import RedisCoordinator
from broker.adapters.vault import VaultAdapter
from broker.app.services import identity_provider, require_migrated, retention_sweeper
from broker.config import Settings
from broker.core.retention import SweepReport
from broker.errors import BrokerError


async def sweep_retention(settings: Settings) -> SweepReport:
    """One retention sweep now (``broker retention sweep``); needs only PostgreSQL."""
    db = await Database.connect(
        settings.database_url.get(), min_size=1, max_size=2, timeout=settings.db_timeout
    )
    try:
        await require_migrated(db)
        return await retention_sweeper(settings, db).sweep()
    finally:
        await db.close()


async def run_migrations(settings: Settings) -> list[str]:
    """Apply pending migrations; returns their names."""
    db = await Database.connect(
        settings.database_url.get(), min_size=1, max_size=1, timeout=settings.db_timeout
    )
    try:
        async with db.connection() as conn:
            return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
    finally:
        await db.close()


async def probe_backends(settings: Settings) -> dict[str, str]:
    """Reach every backend once (``broker check-config``): name -> "ok" or a problem code."""
    report: dict[str, str] = {}
    try:
        db = await Database.connect(
            settings.database_url.get(), min_size=1, max_size=1, timeout=settings.db_timeout
        )
        try:
            async with db.connection() as conn:
                missing = await pending(conn)
            report["postgres"] = f"{len(missing)} migration(s) pending" if missing else "ok"
        finally:
            await db.close()
    except BrokerError as exc:
        report["postgres"] = exc.code
    coordinator = RedisCoordinator(settings)
    report["redis"] = await _probe(coordinator.ping, coordinator.close)
    vault = VaultAdapter(settings)

    async def vault_answers() -> None:
        await vault.login()
        await vault.ping()

    report["vault"] = await _probe(vault_answers, vault.close)
    if settings.oidc_enabled:
        report["oidc"] = await _probe_identity_provider(settings)
    return report


async def _probe_identity_provider(settings: Settings) -> str:
    """The OIDC issuer's discovery document, fetched and checked: "ok" or a problem code."""
    provider = identity_provider(settings)
    try:
        await provider.check()
        return "ok"
    except BrokerError as exc:
        return exc.code
    finally:
        await provider.close()


async def _probe(check: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]]) -> str:
    """``ok`` when ``check`` passes, else its problem code; ``close`` runs either way."""
    try:
        await check()
        return "ok"
    except BrokerError as exc:
        return exc.code
    finally:
        await close()
