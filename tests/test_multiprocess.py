"""Several real broker processes (``python -m broker serve``) against the same backends:
one upstream refresh per stale portal however many callers and replicas ask, and no
secret or token in any line either process logged (canary grep, at DEBUG)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from broker.config import Settings, load_settings
from broker.core.models import PortalKey
from broker.dev.simulator import Simulator
from tests.chaos.cluster import Replica, start_replica
from tests.helpers import decrypt, install_link, register

HUBS = (6_600_001, 6_600_002, 6_600_003)
CALLERS = 200


@pytest.fixture
def replicas(env: dict[str, str], tmp_path: Path) -> Iterator[list[Replica]]:
    env = {**env, "BROKER_LOG_LEVEL": "DEBUG", "BROKER_LOG_FORMAT": "json"}
    asyncio.run(_migrated(load_settings(env)))
    started = [start_replica(env, tmp_path / f"replica-{i}.log") for i in range(2)]
    yield started
    for replica in started:
        replica.terminate()


async def _migrated(settings: Settings) -> None:
    # The per-test database is cloned from a migrated template: nothing is pending.
    conn = await asyncpg.connect(settings.database_url.get())
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await conn.close()


async def _herd(urls: list[str], hub_id: int, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CALLERS)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.get(
                    f"{urls[i % len(urls)]}/v1/portals/{hub_id}/token",
                    params={"app": "demo", "min_ttl": 600},
                    headers={"Authorization": f"Bearer {key}"},
                )
                for i in range(CALLERS)
            )
        )


def test_herd_over_two_processes_refreshes_once_and_logs_no_secret(
    replicas: list[Replica], settings: Settings, sim: Simulator
) -> None:
    urls = [r.url for r in replicas]
    _, client_secret, key = register(
        settings,
        sim,
        f"{urls[0]}/oauth/callback",
        slug="demo",
        roles=("tokens:read", "portals:admin"),
    )
    sim.configure(access_token_ttl=300)  # installed tokens are already "stale" for min_ttl=600
    link = install_link(settings, "demo")  # on urls[0], the registered callback's origin
    for hub in HUBS:
        sim.add_portal(hub)
        sim.configure(consent="auto", consent_hub_id=hub)
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            page = browser.get(link)
        assert page.status_code == 200, page.text
    sim.configure(access_token_ttl=1800)

    served: set[str] = set()
    for hub in HUBS:
        before = sim.refreshes_by_hub().get(hub, 0)
        responses = asyncio.run(_herd(urls, hub, key))
        assert [r.status_code for r in responses] == [200] * CALLERS, responses[0].text
        tokens = {r.json()["access_token"] for r in responses}
        assert len(tokens) == 1  # every caller, on both replicas, got the one refreshed token
        assert sim.refreshes_by_hub()[hub] - before == 1
        served |= tokens
    assert sim.counters()["token.refresh_token"] == len(HUBS)

    # Canary grep: nothing secret in anything either replica wrote, at DEBUG.
    refresh_tokens = []
    conn_rows = asyncio.run(_portal_rows(settings))
    for hub, refresh_ct in conn_rows:
        refresh_tokens.append(
            asyncio.run(decrypt(settings, refresh_ct, PortalKey("demo", hub), "refresh"))
        )
    revoked = httpx.post(
        f"{urls[1]}/v1/admin/portals/{HUBS[0]}/revoke",
        params={"app": "demo"},
        json={"reason": "canary"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert revoked.status_code == 200, revoked.text
    for replica in replicas:
        replica.process.terminate()
        replica.process.wait(15)
    output = "".join(r.log.read_text() for r in replicas)
    assert "refresh.committed" in output  # the logs are there, and at DEBUG
    assert "revoke.upstream_done" in output
    canaries = [*served, *refresh_tokens, client_secret, key, settings.vault_token.get()]
    leaked = [c[:8] for c in canaries if c in output]
    assert leaked == []


async def _portal_rows(settings: Settings) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(settings.database_url.get())
    try:
        rows = await conn.fetch("SELECT hub_id, refresh_ct FROM portals ORDER BY hub_id")
        return [(r["hub_id"], r["refresh_ct"]) for r in rows]
    finally:
        await conn.close()
