"""The Redis lock is advisory: one that outlived its holder (its release lost to a Redis
failover or outage, the key itself replicated) must not hold refreshes back for a lease.
Postgres, which shows no lease, decides."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import redis

from broker.app import create_app
from broker.config import Settings
from broker.dev.simulator import Simulator
from tests.helpers import Deployment, register, serve_app

HUB = 1_800_001


def _portal_id(settings: Settings, hub: int) -> int:
    async def read() -> int:
        conn = await asyncpg.connect(settings.database_url.get())
        try:
            found: int = await conn.fetchval("SELECT id FROM portals WHERE hub_id = $1", hub)
            return found
        finally:
            await conn.close()

    return asyncio.run(read())


def test_a_redis_lock_left_by_a_finished_holder_does_not_stall_refreshes(
    settings: Settings, sim: Simulator, sim_url: str
) -> None:
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        sim.add_portal(HUB)
        assert d.install(HUB, access_token_ttl=600).status_code == 200
        old = d.token(HUB).json()["access_token"]
        ghost = f"{settings.redis_prefix}lock:portal:{_portal_id(settings, HUB)}"
        with redis.Redis.from_url(settings.redis_url.get()) as client:
            client.set(ghost, "a-holder-that-finished-long-ago", px=120_000)
        started = time.monotonic()
        refreshed = d.token(HUB, min_ttl=1500)  # more than the 600 s left: a refresh
        took = time.monotonic() - started
    print(f"refreshed past a stale Redis lock in {took:.2f} s")
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["access_token"] != old  # not the old token served at a deadline
    assert sim.counters()["token.refresh_token"] == 1
