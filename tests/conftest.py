"""Session fixtures: real backends (embedded, env URLs, or testcontainers), the HubSpot
simulator on a loopback port, a migrated template database, and per-test isolation:
a fresh database cloned from the template, a unique Redis prefix and Vault KV prefix."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from broker.adapters.postgres.migrate import migrate
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator, run_in_thread
from broker.dev.stack import BackendUrls
from tests.backends import provide_backends

# One per xdist worker: workers sharing a server (BROKER_TEST_* URLs) never drop each
# other's template.
#: Shared fixtures: the operator page's (``chromium``, ``admin_deployment``) and a
#: workload-identity ``issuer``.
pytest_plugins = ["tests.operator_page", "tests.workload_issuer"]
TEMPLATE_DB = f"htb_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def backends() -> Iterator[BackendUrls]:
    with provide_backends() as urls:
        asyncio.run(
            _admin(
                urls.database_url,
                f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
                f"CREATE DATABASE {TEMPLATE_DB}",
            )
        )

        async def migrate_template() -> None:
            conn = await asyncpg.connect(_with_db(urls.database_url, TEMPLATE_DB))
            try:
                await migrate(conn)
            finally:
                await conn.close()

        asyncio.run(migrate_template())
        yield urls


@pytest.fixture(scope="session")
def sim_server() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator()
    with run_in_thread(sim) as url:
        yield sim, url


@pytest.fixture
def sim(sim_server: tuple[Simulator, str]) -> Simulator:
    simulator, _ = sim_server
    simulator.reset()
    return simulator


@pytest.fixture
def sim_url(sim_server: tuple[Simulator, str]) -> str:
    return sim_server[1]


@pytest.fixture
def database_url(backends: BackendUrls) -> Iterator[str]:
    name = f"t_{secrets.token_hex(6)}"
    asyncio.run(_admin(backends.database_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
    yield _with_db(backends.database_url, name)
    asyncio.run(_admin(backends.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def make_env(
    backends: BackendUrls, database_url: str, sim_url: str, **extra: str
) -> dict[str, str]:
    run = secrets.token_hex(4)
    env = {
        "BROKER_DATABASE_URL": database_url,
        "BROKER_REDIS_URL": backends.redis_url,
        "BROKER_REDIS_PREFIX": f"t{run}:",
        "BROKER_VAULT_ADDR": backends.vault_addr,
        "BROKER_VAULT_TOKEN": backends.vault_token,
        "BROKER_VAULT_KV_PREFIX": f"t{run}",
        "BROKER_HUBSPOT_API_URL": sim_url,
        "BROKER_HUBSPOT_APP_URL": sim_url,
        "BROKER_DEFAULT_APP": "demo",
        "BROKER_MIN_TTL_DEFAULT": "60",
        "BROKER_LOG_LEVEL": "DEBUG",
        # Interactive-path tests count upstream calls; refresher tests turn it back on.
        "BROKER_REFRESHER_ENABLED": "false",
        # Replicas stopped by a test exit at once; the drain tests set their own period.
        "BROKER_DRAIN_SECONDS": "0",
    }
    env.update(extra)
    return env


@pytest.fixture
def env(backends: BackendUrls, database_url: str, sim_url: str) -> dict[str, str]:
    return make_env(backends, database_url, sim_url)


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """`make fuzz` ends with its counts (schemathesis over every documented operation)."""
    if not os.environ.get("BROKER_FUZZ_EXAMPLES"):
        return
    from tests.test_contract import FUZZ_COUNTS

    counts = ", ".join(f"{k}={v}" for k, v in FUZZ_COUNTS.items())
    terminalreporter.write_line(f"fuzz: {counts}")
