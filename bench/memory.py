"""Section 6: memory per cached token. One broker (refresher off), its cache filled with
``Size.memory_portals`` portals through the cold path; the replica's RSS before and after,
divided by the portals cached, is ``cached_token_bytes``. The RSS delta counts everything a
cached token costs the process: the entry, its key, the dict slot, and what the cold path
leaves behind in the allocator."""

from __future__ import annotations

import asyncio
import time

from bench.hot import cold_counts
from bench.load import ClientProcess
from bench.procs import rss_bytes, serving
from bench.report import Bench, count, ms
from bench.seed import APP, deploy, drop, seed_portals, start_broker

MEMORY_FIRST = 3_000_000


def memory(b: Bench) -> None:
    portals = b.size.memory_portals
    d = deploy(b.urls, b.sim, b.sim_url)
    hubs = [MEMORY_FIRST + i for i in range(portals)]
    try:
        asyncio.run(seed_portals(d, b.sim, hubs, lifetime=1800))
        log = b.workdir / "broker-memory.log"
        with serving(start_broker(d, log)) as broker:
            time.sleep(1.0)  # start-up done: pools open, first gauges collected
            before = rss_bytes(broker.pid)
            _, misses0 = cold_counts(broker.url)
            spec = {
                "mode": "once",
                "hosts": [["127.0.0.1", broker.port]],
                "template": {
                    "path": "/v1/portals/{hub}/token?app=" + APP,
                    "headers": d.auth(),
                    "hubs": [hubs[0], hubs[-1] + 1],
                    "min_ttls": [0],
                },
                "connections": 32,
                "check": True,
            }
            warm = ClientProcess(spec, cpus=b.load_cpus).result()
            after = rss_bytes(broker.pid)
            _, misses = cold_counts(broker.url)
    finally:
        drop(d)
    cached = misses - misses0
    bad = warm.errors + sum(v for k, v in warm.statuses.items() if k != "200")
    if bad or cached != portals:
        b.notes.append(f"MEMORY FAILURE: {bad} failed answers, {cached:.0f} of {portals} cached")
    per_token = (after - before) / max(cached, 1)
    b.add(
        "8 memory",
        f"replica RSS, cache empty → {portals:,} cached tokens",
        f"{per_token:,.0f} B per cached token",
        f"{before / 2**20:.0f} → {after / 2**20:.0f} MiB; filled through the cold path at "
        f"{count(warm.rps)} req/s (32 conns, p99 {ms(warm.p99_ms)})",
    )
    b.figures["cached_token_bytes"] = per_token
