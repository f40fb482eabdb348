"""One-off tasks on the backends, without serving: migrations, a retention sweep, and the
backend probes of ``broker check-config``."""

from __future__ import annotations

from broker.adapters.postgres.migrate import migrate, pending
from broker.adapters.postgres.pool import Database
from broker.adapters.redis import RedisCoordinator
from broker.adapters.vault import VaultAdapter
from broker.app.services import identity_provider, retention_sweeper
from broker.config import Settings
from broker.core.retention import SweepReport
from broker.errors import BrokerError, FatalError


async def sweep_retention(settings: Settings) -> SweepReport:
    """One retention sweep now (``broker retention sweep``); needs only PostgreSQL."""
    db = await Database.connect(
        settings.database_url.get(), min_size=1, max_size=2, timeout=settings.db_timeout
    )
    try:
        async with db.connection() as conn:
            missing = await pending(conn)
        if missing:
            raise FatalError(
                f"{len(missing)} database migration(s) pending: run `broker migrate` first",
                code="migrations_pending",
            )
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
    try:
        await coordinator.ping()
        report["redis"] = "ok"
    except BrokerError as exc:
        report["redis"] = exc.code
    finally:
        await coordinator.close()
    vault = VaultAdapter(settings)
    try:
        await vault.login()
        await vault.ping()
        report["vault"] = "ok"
    except BrokerError as exc:
        report["vault"] = exc.code
    finally:
        await vault.close()
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
