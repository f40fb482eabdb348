"""SIGTERM on a real ``broker serve`` under load from 50 keep-alive connections: the replica
turns unready at once, keeps answering every request for its drain period (telling callers
``Connection: close`` so they reconnect elsewhere), lets a refresh that is waiting on HubSpot
finish and stores it, then exits 0. No request sent to it fails."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import asyncpg
import httpx

from broker.config import load_settings
from broker.dev.simulator import Simulator
from tests.chaos.cluster import start_replica
from tests.helpers import Deployment, register

HUBS = list(range(1_400_001, 1_400_021))
CONNECTIONS = 50
DRAIN = 3.0
HUBSPOT_LATENCY = 5.0  # longer than the drain: the refresh is still in flight when it ends


def _load(d: Deployment, until: float, results: list[tuple[float, int | str, bool]]) -> None:
    """CONNECTIONS keep-alive callers asking for the (cached) tokens of HUBS[1:], starting
    requests until ``until``: when each was sent, its status (or the transport error's name),
    and whether the answer said ``Connection: close``."""

    async def caller(client: httpx.AsyncClient, index: int) -> None:
        i = index
        while time.monotonic() < until:
            hub = HUBS[1 + i % (len(HUBS) - 1)]
            i += 1
            sent = time.monotonic()
            try:
                response = await client.get(
                    f"/v1/portals/{hub}/token",
                    params={"app": d.app},
                    headers={"Authorization": f"Bearer {d.caller_key}"},
                )
                closing = response.headers.get("connection") == "close"
                results.append((sent, response.status_code, closing))
            except httpx.TransportError as exc:
                results.append((sent, type(exc).__name__, False))

    async def main() -> None:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        async with httpx.AsyncClient(base_url=d.url, timeout=30, limits=limits) as client:
            await asyncio.gather(*(caller(client, i) for i in range(CONNECTIONS)))

    asyncio.run(main())


def test_sigterm_drains_without_a_failed_request_and_stores_the_refresh_in_flight(
    env: dict[str, str], sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    replica_env = {
        **env,
        "BROKER_DRAIN_SECONDS": str(DRAIN),
        "BROKER_SHUTDOWN_TIMEOUT": "20",
        "BROKER_CALLER_RATE": "100000",  # the load is one caller: measure draining, not 429s
        "BROKER_LOG_LEVEL": "INFO",
    }
    settings = load_settings(replica_env)
    replica = start_replica(replica_env, tmp_path / "replica.log")
    try:
        client_id, secret, key = register(
            settings, sim, f"{replica.url}/oauth/callback", slug="demo"
        )
        d = Deployment(settings, sim, sim_url, replica.url, "demo", client_id, secret, key)
        sim.configure(access_token_ttl=600)  # below min_ttl=1500: asking for it refreshes
        for hub in HUBS:
            sim.add_portal(hub)
            assert d.install(hub).status_code == 200
            assert d.token(hub).status_code == 200
        version_before = _version(settings.database_url.get(), HUBS[0])

        sim.configure(latency_ms={"token": HUBSPOT_LATENCY * 1000})
        refreshes_before = sim.counters().get("token.refresh_token", 0)
        forced: list[httpx.Response] = []
        refresher = threading.Thread(
            target=lambda: forced.append(d.token(HUBS[0], min_ttl=1500)), daemon=True
        )
        results: list[tuple[float, int | str, bool]] = []
        started = time.monotonic()
        # SIGTERM after 1 s. Requests start until the end of the drain period: by then a load
        # balancer has long stopped routing new ones here (that is what the period is for).
        load_until = started + 1.0 + DRAIN - 0.1
        loader = threading.Thread(target=_load, args=(d, load_until, results), daemon=True)
        loader.start()
        refresher.start()
        time.sleep(max(0.0, started + 1.0 - time.monotonic()))

        # The forced refresh waits on HubSpot (it counts a call once it has answered).
        assert sim.counters().get("token.refresh_token", 0) == refreshes_before
        terminated = time.monotonic()
        replica.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{replica.url}/readyz", timeout=5)
        assert ready.status_code == 503, ready.text
        assert ready.json()["reason"] == "draining"
        loader.join(30)
        refresher.join(30)
        exit_code = replica.process.wait(30)
    finally:
        sim.configure(latency_ms=0, access_token_ttl=1800)
        replica.terminate()

    during_drain = [(status, closing) for sent, status, closing in results if sent >= terminated]
    failed = [(round(sent - terminated, 2), s) for sent, s, _ in results if s != 200]
    print(
        f"drain: {len(results)} requests at {CONNECTIONS} keep-alive connections, "
        f"{len(during_drain)} sent during the {DRAIN:g} s drain, {len(failed)} failed"
    )
    assert len(during_drain) > 100, "the load did not run through the drain period"
    assert failed == []
    # Keep-alive callers were told to reconnect (elsewhere, behind a load balancer) instead
    # of holding a connection the replica is about to close.
    assert all(closing for _, closing in during_drain[CONNECTIONS:])
    assert exit_code == 0
    # The refresh HubSpot answered after the drain period ended was still answered and stored.
    assert len(forced) == 1
    assert forced[0].status_code == 200, forced[0].text
    assert _version(settings.database_url.get(), HUBS[0]) == version_before + 1
    assert sim.counters()["token.refresh_token"] == refreshes_before + 1
    assert time.monotonic() - terminated >= HUBSPOT_LATENCY - 1.0  # it did wait for it


def _version(database_url: str, hub: int) -> int:
    async def read() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            version: int = await conn.fetchval("SELECT version FROM portals WHERE hub_id = $1", hub)
            return version
        finally:
            await conn.close()

    return asyncio.run(read())
