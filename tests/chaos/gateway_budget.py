"""``gateway_budget`` (issue 16, "Must show"): three services, each its own process, hammer
one portal at three times its HubSpot limit, through the gateway of two replicas, then the
same three call HubSpot directly with tokens from the token route (another portal, so the
simulator's window starts empty).

Through the gateway the portal's budget is shared by the callers and both replicas: the
promise is **no HubSpot 429**, throughput within 10 % of the limit and each caller's share
within 20 % of fair (checked on runs of 30 s or more: a shorter run is dominated by the
first window's burst). Printed: ``hubspot_429`` (gateway phase), throughput, the shares, the
p99 queue time from the replicas' ``broker_gateway_queue_seconds``, and ``direct_429``: the
429s the same callers drew calling HubSpot themselves."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from broker.app.services import open_admin
from broker.dev.simulator import Simulator
from tests.chaos.cluster import Cluster, open_cluster
from tests.helpers import metric_samples

LIMIT = 110  # HubSpot's ten-secondly limit per portal, the simulator's and the broker's
WINDOW = 10.0
GATEWAY_HUB, DIRECT_HUB = 9_500_001, 9_500_002


def _callers(c: Cluster) -> list[str]:
    async def make() -> list[str]:
        keys = []
        async with open_admin(c.settings) as svc:
            for i in range(3):
                new = await svc.callers.create(
                    f"service-{i}", roles=["tokens:read"], apps=[c.app], actor="chaos"
                )
                await svc.callers.set_gateway(
                    new.caller.name, hubspot_paths=["/crm/"], actor="chaos"
                )
                keys.append(new.secret)
        return keys

    return asyncio.run(make())


def _hammer(
    mode: str, keys: list[str], hub: int, seconds: float, targets: list[str]
) -> list[dict[str, Any]]:
    rate = 3 * LIMIT / WINDOW / len(keys)  # together: three times the portal's limit
    urls = [str(seconds), *targets]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.hammer", mode, key, str(hub), str(rate), *urls],
            stdout=subprocess.PIPE,
        )
        for key in keys
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 120)
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def _queue_p99(c: Cluster) -> float:
    """The 99th percentile of the replicas' queue-time histogram (its bucket's bound)."""
    buckets: dict[float, float] = {}
    for replica in c.replicas:
        text = httpx.get(f"{replica.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "broker_gateway_queue_seconds_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    total = buckets.get(math.inf, 0.0)
    for bound in sorted(buckets):
        if total and buckets[bound] >= 0.99 * total:
            return bound
    return 0.0


class Outcome(Protocol):
    figures: dict[str, float | int | str]
    problems: list[str]


def run(env: dict[str, str], sim: Simulator, sim_url: str, seconds: float, result: Outcome) -> None:
    figures, problems = result.figures, result.problems
    sim.configure(api_rate_limit=LIMIT)
    # A short run (make test) waits less for budget, so it ends soon after its load does.
    wait = "10" if seconds >= 30 else "1"
    c = open_cluster(
        env,
        sim,
        sim_url,
        replicas=2,
        BROKER_BUDGET_PER_TEN_SECONDS=str(LIMIT),
        BROKER_BUDGET_MAX_WAIT=wait,
    )
    try:
        c.install([GATEWAY_HUB, DIRECT_HUB])
        keys = _callers(c)
        urls = [r.url for r in c.replicas]
        before = sim.counters()["contacts.rate_limited"]
        through = _hammer("gateway", keys, GATEWAY_HUB, seconds, urls)
        received = sim.counters()["contacts.rate_limited"] - before
        served = [r["statuses"].get("200", 0) for r in through]
        throughput = sum(served) / seconds
        expected = LIMIT / WINDOW + LIMIT / seconds  # the rate, plus the first window's burst
        shares = [s / max(1, sum(served)) for s in served]
        figures["hubspot_429"] = received
        figures["throughput_rps"] = round(throughput, 2)
        figures["limit_rps"] = round(expected, 2)
        figures["shares"] = "/".join(f"{s:.2f}" for s in shares)
        figures["gateway_429"] = sum(r["statuses"].get("429", 0) for r in through)
        figures["p99_queue_s"] = _queue_p99(c)
        figures["local_takes"] = sum(
            value
            for r in c.replicas
            for labels, value in metric_samples(r.url, "broker_budget_takes_total")
            if labels["store"] == "local"
        )
        before = sim.counters()["contacts.rate_limited"]
        direct = _hammer("direct", keys, DIRECT_HUB, seconds, [*urls, sim_url])
        figures["direct_429"] = sim.counters()["contacts.rate_limited"] - before
        figures["direct_429_seen"] = sum(r["statuses"].get("429", 0) for r in direct)
        figures["seconds"] = seconds
        if received:
            problems.append(f"HubSpot answered {received} 429s through the gateway")
        other = {k for r in through for k in r["statuses"] if k not in ("200", "429")}
        if other:
            problems.append(f"unexpected statuses through the gateway: {sorted(other)}")
        if seconds >= 30:
            if abs(throughput - expected) > 0.1 * expected:
                problems.append(f"throughput {throughput:.2f}/s, limit {expected:.2f}/s")
            if any(abs(s - 1 / 3) > 0.2 / 3 for s in shares):
                problems.append(f"shares {figures['shares']} not within 20 % of fair")
    finally:
        c.close()
