"""A replica starting cold under load, on real processes: 3,000 distinct portals asked for at
50 connections share Transit calls (far fewer Transit requests, decrypts and fingerprint
HMACs alike, than cache misses), and a
replica started afterwards pre-warms the most requested portals before it turns ready, so
those callers never take the cold path at all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.hot import cold_counts
from bench.load import ClientProcess, LoadResult
from bench.procs import Server, serving
from bench.seed import APP, Deployment, deploy, drop, seed_portals, start_broker
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls
from tests.helpers import metric_value

PORTALS = 3_000
CONNECTIONS = 50
FIRST_HUB = 1_600_000


def _ask_each_once(d: Deployment, server: Server, hubs: list[int]) -> LoadResult:
    """Every portal once, CONNECTIONS at a time, from a load generator in another process
    (bench.client): fast enough to load the broker, as a real stampede would."""
    spec: dict[str, Any] = {
        "mode": "once",
        "hosts": [["127.0.0.1", server.port]],
        "template": {
            "path": "/v1/portals/{hub}/token?app=" + APP,
            "headers": d.auth(),
            "hubs": [hubs[0], hubs[-1] + 1],
            "min_ttls": [300],
        },
        "connections": CONNECTIONS,
        "check": True,
    }
    return ClientProcess(spec).result()


def test_cold_start_shares_transit_calls_and_a_restart_prewarms(
    backends: BackendUrls, sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    d = deploy(backends, sim, sim_url, BROKER_CALLER_RATE="100000")
    hubs = list(range(FIRST_HUB, FIRST_HUB + PORTALS))
    try:
        asyncio.run(seed_portals(d, sim, hubs, lifetime=1800))
        # 1. Cold, no pre-warming: every request is a cache miss.
        with serving(start_broker(d, tmp_path / "cold.log", BROKER_PREWARM_PORTALS="0")) as cold:
            before = cold_counts(cold.url)
            result = _ask_each_once(d, cold, hubs)
            calls, misses = (a - b for a, b in zip(cold_counts(cold.url), before, strict=True))
        assert result.ok == PORTALS, result
        assert misses == PORTALS
        per_miss = calls / misses
        print(
            f"cold start: {PORTALS} portals at {CONNECTIONS} conns, {result.rps:.0f} req/s, "
            f"p99 {result.p99_ms:.1f} ms; {calls:.0f} Transit calls for "
            f"{misses:.0f} misses = {per_miss:.3f} per miss"
        )
        assert per_miss < 1

        # 2. A restart pre-warms them (they are now the most requested, per the audit trail)
        # before it reports ready: the same requests are all cache hits.
        env = {"BROKER_PREWARM_PORTALS": str(PORTALS), "BROKER_PREWARM_SECONDS": "60"}
        with serving(start_broker(d, tmp_path / "warm.log", **env)) as warm:
            hits = metric_value(warm.url, "broker_token_requests_total", result="cache_hit")
            result = _ask_each_once(d, warm, hubs)
            after = metric_value(warm.url, "broker_token_requests_total", result="cache_hit")
            warm_calls, warm_misses = cold_counts(warm.url)
        assert result.ok == PORTALS, result
        assert after - hits == PORTALS
        assert warm_misses == 0
        print(f"pre-warmed restart: {PORTALS} cache hits, {warm_calls:.0f} Transit calls")
        assert warm_calls <= PORTALS / 100  # batches, not one call per portal
    finally:
        drop(d)
