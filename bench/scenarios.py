"""Sections 3 and 4 on several broker processes: a herd on an expired token, and the
proactive refresher at 1,000 to 100,000 portals. Nothing is pinned here: replicas, the
backends and the simulator share every core, as they would share a node."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import ExitStack
from typing import Any

import asyncpg
import httpx

from bench.load import ClientProcess, LoadResult
from bench.procs import Server, cpu_seconds, rss_bytes, serving
from bench.report import Bench, count, ms
from bench.seed import APP, Deployment, deploy, drop, seed_portals, start_broker

HERD_FIRST = 200_000
SCALE_FIRST = 1_000_000
SCALE_TTL = 600  # the simulator's access-token lifetime while scaling: time compressed 3x
CALLER_MIN_TTLS = [60, 300, 500]


def herd(b: Bench) -> None:
    size = b.size
    d = deploy(b.urls, b.sim, b.sim_url)
    hubs = list(range(HERD_FIRST, HERD_FIRST + size.herd_rounds + 1))  # round 0 warms up
    try:
        asyncio.run(seed_portals(d, b.sim, hubs, lifetime=1800, expired=True))
        with ExitStack() as stack:
            replicas = [
                stack.enter_context(serving(start_broker(d, b.workdir / f"broker-herd-{i}.log")))
                for i in range(3)
            ]
            b.sim.configure(latency_ms={"token": size.herd_latency_ms})
            try:
                rounds = [_herd_round(b, d, replicas, hub) for hub in hubs]
            finally:
                b.sim.configure(latency_ms=0.0)
    finally:
        drop(d)
    (first_calls, first), measured = rounds[0], rounds[1:]
    calls = [c for c, _ in measured]
    results = [r for _, r in measured]
    for upstream, result in rounds:
        bad = result.errors + sum(v for k, v in result.statuses.items() if k != "200")
        if upstream != 1 or bad or result.violations or result.distinct_tokens != 1:
            b.notes.append(f"HERD FAILURE: {upstream} upstream calls, {bad} failed, {result}")
    shape = f"{size.herd_callers} callers over 3 replicas, released at once"
    b.add(
        "3 herd",
        "upstream refresh calls per expired token (must be 1)",
        ", ".join(str(c) for c in calls),
        f"{shape}; {len(calls)} rounds; distinct tokens served per round: "
        + ", ".join(str(r.distinct_tokens) for r in results),
    )
    b.add(
        "3 herd",
        f"waiter latency, simulator token endpoint at {size.herd_latency_ms} ms",
        f"p50 {ms(_median(r.p50_ms for r in results))} · p99 {ms(max(r.p99_ms for r in results))}"
        f" · max {ms(max(r.max_ms for r in results))}",
        f"p50 is the median round's, p99/max the worst round's; first expiry after start "
        f"(cold app/secret caches): {first_calls} call, p99 {ms(first.p99_ms)}",
    )


def _median(values: Any) -> float:
    ordered = sorted(values)
    return float(ordered[len(ordered) // 2]) if ordered else 0.0


def _herd_round(
    b: Bench, d: Deployment, replicas: list[Server], hub: int
) -> tuple[int, LoadResult]:
    before = b.sim.refreshes_by_hub().get(hub, 0)
    spec = {
        "mode": "herd",
        "hosts": [["127.0.0.1", r.port] for r in replicas],
        "targets": [
            {"path": f"/v1/portals/{hub}/token?app={APP}&min_ttl=60", "headers": d.auth()}
            | {"min_ttl": 60}
        ],
        "connections": b.size.herd_callers,
        "warm_path": "/livez",
        "check": True,
    }
    result = ClientProcess(spec).result()
    return b.sim.refreshes_by_hub().get(hub, 0) - before, result


def scale(b: Bench) -> None:
    b.sim.configure(access_token_ttl=SCALE_TTL)
    try:
        for portals in b.size.scale:
            _scale_one(b, portals)
    finally:
        b.sim.configure(access_token_ttl=1800)


def _row(d: Deployment, query: str, *args: Any) -> asyncpg.Record:
    async def fetch() -> asyncpg.Record:
        conn = await asyncpg.connect(d.database_url)
        try:
            row = await conn.fetchrow(query, *args)
        finally:
            await conn.close()
        assert row is not None
        return row

    return asyncio.run(fetch())


def _metric(server: Server, name: str, labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _scale_one(b: Bench, portals: int) -> None:
    unlimited = {"BROKER_REFRESH_RATE_PER_APP": "1000000", "BROKER_REFRESH_RATE_MAX": "1000000"}
    d = deploy(b.urls, b.sim, b.sim_url, **unlimited)
    hubs = [SCALE_FIRST + i for i in range(portals)]
    try:
        seeded = asyncio.run(seed_portals(d, b.sim, hubs, lifetime=SCALE_TTL))
        log = b.workdir / f"broker-scale-{portals}.log"
        with serving(start_broker(d, log, BROKER_REFRESHER_ENABLED="true")) as broker:
            _measure_scale(b, d, broker, portals, seeded.total_s)
    finally:
        drop(d)


def _measure_scale(
    b: Bench, d: Deployment, broker: Server, portals: int, seed_seconds: float
) -> None:
    size, label = b.size, f"{portals:,} portals"
    hub_range = [SCALE_FIRST, SCALE_FIRST + portals]
    path = "/v1/portals/{hub}/token?app=" + APP + "&min_ttl={min_ttl}"
    template = {"path": path, "headers": d.auth(), "hubs": hub_range}
    host = [["127.0.0.1", broker.port]]
    time.sleep(1.0)
    rss_before = rss_bytes(broker.pid)
    warm_spec = {"mode": "once", "hosts": host, "connections": 32, "check": True}
    warm = ClientProcess({**warm_spec, "template": {**template, "min_ttls": [0]}}).result()
    rss_after = rss_bytes(broker.pid)
    cpu, started = cpu_seconds(broker.pid), time.monotonic()
    time.sleep(2.0)  # the replica alone: its idle loops (refresher scans, audit, gauges)
    idle_rate = (cpu_seconds(broker.pid) - cpu) / (time.monotonic() - started)
    callers = ClientProcess(
        {
            "mode": "rate",
            "hosts": host,
            "template": {**template, "min_ttls": CALLER_MIN_TTLS},
            "rate": size.caller_rate,
            "connections": 16,
            "duration": None,
            "check": True,
        }
    )
    try:
        upstream0 = b.sim.counters()["token.refresh_token"]
        interactive0 = _metric(broker, "broker_token_requests_total", 'result="refreshed"')
        # Time compression: every portal reaches its refresh time now (within 2 s), as if
        # the ~60-72% of its lifetime had passed; the rows' expiry is left alone.
        jump = _row(
            d,
            """WITH t AS (SELECT clock_timestamp() AS t0)
               UPDATE portals SET refresh_after = t.t0 + random() * interval '2 seconds'
               FROM t RETURNING t.t0""",
        )["t0"]
        cpu, started = cpu_seconds(broker.pid), time.monotonic()
        done, span = 0, 0.0
        while done < portals and time.monotonic() - started < size.drain_cap:
            time.sleep(0.2)
            row = _row(
                d,
                """SELECT count(*) AS n, extract(epoch FROM max(refreshed_at) - $1) AS span
                   FROM portals WHERE refreshed_at >= $1""",
                jump,
            )
            done, span = int(row["n"]), float(row["span"] or 0.0)
        elapsed = time.monotonic() - started
        used = cpu_seconds(broker.pid) - cpu - idle_rate * elapsed
        upstream = b.sim.counters()["token.refresh_token"] - upstream0
        interactive = _metric(broker, "broker_token_requests_total", 'result="refreshed"')
    finally:
        answers = callers.result()
    interactive -= interactive0
    proactive = upstream - interactive
    finished = "all" if done >= portals else f"{done:,} of {portals:,} (cap {size.drain_cap:g} s)"
    b.add(
        "4 scale",
        f"{label}: proactive refreshes/s, one replica (all due at once)",
        f"{count(proactive / span if span > 0 else 0.0)} refreshes/s",
        f"{finished} portals refreshed in {span:.1f} s; upstream calls {upstream:,} of which "
        f"interactive {interactive:,.0f} (callers' min_ttl); seeded in {seed_seconds:.1f} s",
    )
    b.add(
        "4 scale",
        f"{label}: replica CPU per refresh",
        f"{used * 1000 / max(upstream, 1):.2f} ms",
        f"/proc/<pid>/stat over the drain minus idle ({idle_rate:.1%} of a core), over every "
        f"upstream call; includes serving {count(size.caller_rate)} caller req/s",
    )
    bad = answers.errors + sum(v for k, v in answers.statuses.items() if k != "200")
    b.add(
        "4 scale",
        f"{label}: answers with expires_in < min_ttl (must be 0)",
        f"{answers.violations}",
        f"{answers.requests:,} answers checked (min_ttl {CALLER_MIN_TTLS}), {bad} not 200, "
        f"smallest margin {answers.min_margin} s, p99 {ms(answers.p99_ms)}",
    )
    per_token = (rss_after - rss_before) / portals
    b.add(
        "4 scale",
        f"{label}: replica RSS, cache empty → {portals:,} cached",
        f"{rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB",
        f"{per_token:,.0f} B per cached token; warmed at {count(warm.rps)} req/s "
        f"(cold path, 32 conns, p99 {ms(warm.p99_ms)})",
    )
