"""Section 9: what the HubSpot gateway adds to a HubSpot call.

The simulator's ``GET /crm/v3/objects/contacts`` called directly with the portal's token
(as a service does with a token from the token route), and through the broker's gateway
(``/v1/portals/{hub_id}/hubspot/crm/v3/objects/contacts``, a caller key), measured
alternately, twice each: first closed loops on ``connections`` keep-alive connections (what
one replica sustains: at saturation the latency is its queue), then open loops at the same
fixed rate over the same connections, half the gateway's closed-loop throughput (latency
counted from each request's scheduled time). Added latency (``gateway_added_p50_ms``,
``gateway_added_p99_ms``): the gateway's p50 (p99) minus the direct one in the open loops.
The simulator's and the broker's per-portal limits are lifted so neither answers 429. The
simulator runs in the bench process, so both share its speed; the broker is pinned like the
hot path's.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from bench.load import LoadResult, closed_loop, run_client
from bench.procs import serving
from bench.report import Bench, count, ms
from bench.seed import APP, deploy, drop, seed_portals, start_broker
from broker.app.services import open_admin
from broker.config import Settings

HUB = 7
_CONTACTS = "/crm/v3/objects/contacts?limit=1"


def _line(result: LoadResult) -> str:
    return f"{count(result.rps)} req/s · p50 {ms(result.p50_ms)} · p99 {ms(result.p99_ms)}"


async def _grant(settings: Settings, name: str) -> None:
    async with open_admin(settings) as svc:
        await svc.callers.set_gateway(name, hubspot_paths=["/crm/"], actor="bench")


def run(b: Bench) -> None:
    size = b.size
    d = deploy(b.urls, b.sim, b.sim_url, callers=1)
    b.sim.configure(api_rate_limit=10**9)
    open_results: dict[str, list[LoadResult]] = {"direct": [], "gateway": []}
    rate = 0.0
    try:
        asyncio.run(seed_portals(d, b.sim, [HUB], lifetime=1800))
        asyncio.run(_grant(d.settings, "bench-caller-0"))
        log = b.workdir / "broker-gateway.log"
        broker_env = {"BROKER_BUDGET_PER_TEN_SECONDS": str(10**9)}
        with serving(start_broker(d, log, cpus=b.target_cpus, **broker_env)) as broker:
            token = httpx.get(
                f"{broker.url}/v1/portals/{HUB}/token?app={APP}", headers=d.auth(), timeout=30
            )
            token.raise_for_status()
            direct_auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
            sim = urlsplit(b.sim_url)
            targets = {
                "direct": ((sim.hostname or "127.0.0.1", sim.port or 80), _CONTACTS, direct_auth),
                "gateway": (
                    ("127.0.0.1", broker.port),
                    f"/v1/portals/{HUB}/hubspot{_CONTACTS}&app={APP}",
                    d.auth(),
                ),
            }
            results: dict[str, list[LoadResult]] = {"direct": [], "gateway": []}
            for host_port, path, headers in targets.values():  # warm-up
                closed_loop(
                    host_port,
                    path,
                    headers=headers,
                    connections=size.connections,
                    seconds=size.warmup,
                    cpus=b.load_cpus,
                    use_wrk=b.use_wrk,
                )
            for _ in range(2):  # alternately: the machine's noise hits both alike
                for name, (host_port, path, headers) in targets.items():
                    result = closed_loop(
                        host_port,
                        path,
                        headers=headers,
                        connections=size.connections,
                        seconds=size.seconds / 2,
                        cpus=b.load_cpus,
                        use_wrk=b.use_wrk,
                    )
                    results[name].append(_checked(result, name))
            rate = max(10.0, sum(r.rps for r in results["gateway"]) / 4)  # half its throughput
            for _ in range(2):
                for name, (host_port, path, headers) in targets.items():
                    spec = {
                        "mode": "rate",
                        "rate": rate,
                        "hosts": [list(host_port)],
                        "targets": [{"path": path, "headers": headers}],
                        "connections": size.connections,
                        "duration": size.seconds / 2,
                    }
                    result = run_client(spec, cpus=b.load_cpus)
                    open_results[name].append(_checked(result, f"{name} at {rate:.0f}/s"))
    finally:
        drop(d)
        b.sim.configure(api_rate_limit=110)

    def mean(runs: dict[str, list[LoadResult]], name: str, field: str) -> float:
        values = [getattr(r, field) for r in runs[name]]
        return sum(values) / len(values)

    for name, label in (
        ("direct", "simulator GET /crm/v3/objects/contacts, direct with the token"),
        ("gateway", "the same through GET /v1/portals/{id}/hubspot/..."),
    ):
        last = results[name][-1]
        detail = f"{last.tool}, {size.connections} conns, 2 x {size.seconds / 2:g} s alternated"
        b.add("9 gateway", f"{label}, closed loop", _line(last), detail)
        last = open_results[name][-1]
        detail = f"open loop at {rate:.0f} req/s on {size.connections} conns, 2 x alternated"
        b.add("9 gateway", f"{label}, fixed rate", _line(last), detail)
    added_p50 = mean(open_results, "gateway", "p50_ms") - mean(open_results, "direct", "p50_ms")
    added_p99 = mean(open_results, "gateway", "p99_ms") - mean(open_results, "direct", "p99_ms")
    saturated = mean(results, "gateway", "p50_ms") - mean(results, "direct", "p50_ms")
    b.add(
        "9 gateway",
        "added by the gateway",
        f"p50 +{ms(added_p50)} · p99 +{ms(added_p99)} at {rate:.0f} req/s",
        f"mean of the two open-loop runs each; closed loop (saturated): p50 +{ms(saturated)}",
    )
    b.figures["gateway_added_p50_ms"] = added_p50
    b.figures["gateway_added_p99_ms"] = added_p99
    b.figures["gateway_rps_50"] = mean(results, "gateway", "rps")


def _checked(result: LoadResult, name: str) -> LoadResult:
    bad = result.errors + sum(v for k, v in result.statuses.items() if k != "200")
    if bad or not result.requests:
        raise RuntimeError(f"gateway bench, {name}: {bad} failed: {result}")
    return result
