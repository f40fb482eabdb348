"""Session fixtures: real backends (embedded, env URLs, or testcontainers), the HubSpot
simulator on a loopback port, a migrated template database, and per-test isolation:
a fresh database cloned from the template, a unique Redis prefix and Vault KV prefix."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from typing import Any

import asyncpg
import pytest

from broker.adapters.postgres.migrate import migrate
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator, run_in_thread
from broker.dev.stack import BackendUrls
from tests.backends import provide_backends
from tests.helpers import (
    FUZZ_COUNTS,
    Deploy,
    Deployment,
    admin_sql,
    database_named,
    deployed,
    make_env,
)

# One per xdist worker: workers sharing a server (BROKER_TEST_* URLs) never drop each
# other's template.
#: Shared fixtures: the operator page's (``chromium``, ``admin_deployment``) and a
#: workload-identity ``issuer``.
pytest_plugins = ["tests.operator_page", "tests.workload_issuer"]
TEMPLATE_DB = f"htb_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


@pytest.fixture(scope="session")
def backends() -> Iterator[BackendUrls]:
    with provide_backends() as urls:
        asyncio.run(
            admin_sql(
                urls.database_url,
                f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
                f"CREATE DATABASE {TEMPLATE_DB}",
            )
        )

        async def migrate_template() -> None:
            conn = await asyncpg.connect(database_named(urls.database_url, TEMPLATE_DB))
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
    asyncio.run(admin_sql(backends.database_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
    yield database_named(backends.database_url, name)
    asyncio.run(admin_sql(backends.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def env(backends: BackendUrls, database_url: str, sim_url: str) -> dict[str, str]:
    return make_env(backends, database_url, sim_url)


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
def deploy(env: dict[str, str], sim: Simulator, sim_url: str) -> Iterator[Deploy]:
    """The one deployment factory: ``deploy(env=..., portals=..., installed=..., roles=...,
    **app_fields)`` serves a broker (:func:`tests.helpers.deployed`) on this test's backends
    with the test's ``env`` plus ``env``; every broker it started stops after the test."""
    with ExitStack() as stack:
        base = env

        def make(*, env: Mapping[str, str] | None = None, **options: Any) -> Deployment:
            settings = load_settings({**base, **(env or {})})
            return stack.enter_context(deployed(settings, sim, sim_url, **options))

        yield make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """`make fuzz` ends with its counts (schemathesis over every documented operation)."""
    if not os.environ.get("BROKER_FUZZ_EXAMPLES"):
        return
    counts = ", ".join(f"{k}={v}" for k, v in FUZZ_COUNTS.items())
    terminalreporter.write_line(f"fuzz: {counts}")
