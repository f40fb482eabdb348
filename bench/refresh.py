"""Section 6 on one broker process: proactive refreshes against the simulator's token endpoint
at 50 ms, how many per second one replica sustains and how much of its CPU each costs, and
where that CPU goes (``py-spy``, by stage).

The same portals are drained several times on a fresh replica each time (every drain moves
every portal's ``refresh_after`` to now, as the scale section does): first with the
refresher's former fixed sizing (8 slots, claims of 32) as the baseline, then with the
defaults, then once more under ``py-spy`` for the breakdown (sampling slows the process a
little, so that drain is not the one measured). No callers: the CPU is the refresher's.

With ``--baseline-tree DIR`` (a checkout of the code to compare with) the baseline is that
code with its defaults instead: its drains and ours alternate, twice each, so both see the
same machine load, and both are profiled.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis

from bench.procs import Server, cpu_seconds, serving
from bench.report import Bench, count
from bench.scenarios import _row
from bench.seed import APP, Deployment, deploy, drop, seed_portals, start_broker

REFRESH_FIRST = 3_000_000
LATENCY_MS = 50
#: The refresher's sizing before issue 15 (fixed slots and claims): the baseline drain.
FORMER = {"BROKER_REFRESHER_CONCURRENCY": "8", "BROKER_REFRESHER_BATCH": "32"}
#: Commands Valkey counts only inside our Lua scripts (not round trips of their own).
IN_SCRIPTS = frozenset({"time", "hmget", "pttl", "hset", "pexpire", "get", "del"})
READS = "(reads)"
#: (stage, module path fragments); a sample goes to the first stage any of its frames
#: matches, so e.g. JSON decoding inside httpx counts as JSON.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("structlog (logs)", ("structlog/", "broker/logs")),
    ("metrics (prometheus)", ("prometheus_client/", "broker/metrics")),
    ("audit", ("broker/core/audit", "postgres/audit")),
    ("JSON", ("json/",)),
    ("Vault/Transit client", ("hvac/", "requests/", "urllib3/", "adapters/vault")),
    ("HubSpot HTTP client", ("httpx/", "httpcore/", "h11/", "anyio/", "adapters/hubspot")),
    # The lean HTTP/1.1 client's own callbacks (parsing answers), for HubSpot and Vault.
    ("HTTP/1.1 client callbacks", ("adapters/http1", "httptools")),
    ("asyncpg", ("asyncpg/", "adapters/postgres")),
    ("Redis", ("redis/", "adapters/redis")),
    ("refresh protocol (broker/core)", ("broker/core/",)),
    ("asyncio overhead", ("asyncio/", "selectors", "uvloop", "threading", "concurrent/")),
)


def run(b: Bench) -> None:
    portals = b.size.refresh_portals
    # The app's rate out of the way: this measures the replica, not the limiter.
    unlimited = {"BROKER_REFRESH_RATE_PER_APP": "100000", "BROKER_REFRESH_RATE_MAX": "100000"}
    d = deploy(b.urls, b.sim, b.sim_url, **unlimited)
    hubs = [REFRESH_FIRST + i for i in range(portals)]
    try:
        asyncio.run(seed_portals(d, b.sim, hubs, lifetime=1800))
        b.sim.configure(latency_ms={"token": LATENCY_MS})
        try:
            if b.baseline_tree is None:
                before = _drain(b, d, "former", FORMER)
                after = _drain(b, d, "default", {})
                base_stages: Counter[str] = Counter()
            else:
                tree = b.baseline_tree
                pairs = [
                    (_drain(b, d, f"tree-{i}", {}, tree), _drain(b, d, f"default-{i}", {}))
                    for i in range(2)
                ]
                before = Drain.merged([pair[0] for pair in pairs])
                after = Drain.merged([pair[1] for pair in pairs])
                base_stages = _profiled(b, d, "tree", tree)
            stages = _profiled(b, d, "default", None)
        finally:
            b.sim.configure(latency_ms=0.0)
    finally:
        drop(d)
    if b.baseline_tree is None:
        baseline = "baseline, the former fixed 8 slots and claims of 32"
        cpu_baseline = (
            "the baseline is this code with the former sizing (before issue 15: 6.8 ms in the "
            "scale section, with callers)"
        )
    else:
        baseline = f"baseline, the code in {b.baseline_tree.name} with its defaults"
        cpu_baseline = f"the baseline is the code in {b.baseline_tree.name}, alternating drains"
    label = f"{portals:,} portals due at once, token endpoint at {LATENCY_MS} ms"
    b.add(
        "6 refresh",
        f"proactive refreshes/s, one replica ({label})",
        f"{count(after.rate)} refreshes/s (baseline {count(before.rate)})",
        f"defaults: {after.detail}; {baseline}: {before.detail}",
    )
    b.add(
        "6 refresh",
        "replica CPU per proactive refresh",
        f"{after.cpu_ms:.2f} ms (baseline {before.cpu_ms:.2f} ms)",
        f"/proc/<pid>/stat over the drain (idle loops included), per upstream call; no "
        f"callers; at this cost one core refreshes {count(1000 / max(after.cpu_ms, 0.01))}/s; "
        f"{cpu_baseline}",
    )
    if stages:
        _breakdown(b, "defaults", stages, after.cpu_ms)
        if base_stages:
            _breakdown(b, "baseline", base_stages, before.cpu_ms)
    else:
        b.notes.append("refresh: py-spy unavailable, no CPU breakdown by stage")
    b.add(
        "6 refresh",
        "Redis round trips per proactive refresh",
        f"{after.redis_reads:.2f} (baseline {before.redis_reads:.2f})",
        "Valkey INFO stats total_reads_processed over the drain per upstream call (a "
        "pipeline is one; the bench's own INFO calls included); commands (INFO "
        f"commandstats, those run inside scripts left out): defaults {after.redis_detail}; "
        f"baseline {before.redis_detail}",
    )
    b.figures["refresh_cpu_ms"] = after.cpu_ms
    b.figures["refreshes_per_s_replica"] = after.rate


def _breakdown(b: Bench, name: str, stages: Counter[str], cpu_ms: float) -> None:
    total = sum(stages.values())
    shares = ", ".join(f"{stage} {n / total:.0%}" for stage, n in stages.most_common())
    b.add(
        "6 refresh",
        f"CPU per refresh by stage (py-spy, {name})",
        " · ".join(f"{stage} {cpu_ms * n / total:.2f} ms" for stage, n in stages.most_common(4)),
        f"{total:,} samples: {shares}",
    )


class Drain:
    def __init__(
        self,
        refreshed: int,
        upstream: int,
        seconds: float,
        cpu: float,
        redis_calls: Counter[str] | None = None,
    ) -> None:
        self.refreshed, self.upstream, self.seconds, self.cpu = refreshed, upstream, seconds, cpu
        self.redis_calls = redis_calls or Counter()
        self.rate = refreshed / seconds if seconds > 0 else 0.0
        self.cpu_ms = cpu * 1000 / max(upstream, 1)
        self.detail = f"{refreshed:,} refreshed in {seconds:.1f} s, {upstream:,} upstream calls"
        trips = {k: n for k, n in self.redis_calls.items() if k not in {*IN_SCRIPTS, READS}}
        self.redis_per_refresh = sum(trips.values()) / max(upstream, 1)
        self.redis_reads = self.redis_calls[READS] / max(upstream, 1)
        self.redis_detail = ", ".join(
            f"{name} {n / max(upstream, 1):.2f}" for name, n in Counter(trips).most_common()
        )
        self.redis_detail += f"; socket reads {self.redis_reads:.2f}"

    @classmethod
    def merged(cls, drains: list[Drain]) -> Drain:
        return cls(
            sum(d.refreshed for d in drains),
            sum(d.upstream for d in drains),
            sum(d.seconds for d in drains),
            sum(d.cpu for d in drains),
            sum((d.redis_calls for d in drains), Counter()),
        )


def _redis_calls(b: Bench) -> Counter[str]:
    """Valkey's calls per command so far (``INFO commandstats``)."""
    client = redis.Redis.from_url(b.urls.redis_url)
    try:
        stats, reads = client.info("commandstats"), client.info("stats")
    finally:
        client.close()
    calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
    # Reads the server processed: one per round trip (a pipeline of several commands is one).
    calls[READS] = int(reads["total_reads_processed"])
    return calls


def _drain(
    b: Bench,
    d: Deployment,
    name: str,
    env: dict[str, str],
    tree: Path | None = None,
    *,
    profile: Path | None = None,
) -> Drain:
    log = b.workdir / f"broker-refresh-{name}.log"
    started = start_broker(d, log, tree=tree, BROKER_REFRESHER_ENABLED="true", **env)
    with serving(started) as broker:
        time.sleep(2.0)  # past the start (its CPU is not a refresh's)
        upstream0 = b.sim.counters()["token.refresh_token"]
        spy = _spy(broker, profile) if profile is not None else None
        try:
            jump = _row(
                d,
                "UPDATE portals SET refresh_after = clock_timestamp() "
                "RETURNING clock_timestamp() AS t0",
            )["t0"]
            cpu, calls = cpu_seconds(broker.pid), _redis_calls(b)
            done, span = _wait_refreshed(b, d, jump)
            used = cpu_seconds(broker.pid) - cpu
            calls = _redis_calls(b) - calls
            calls.pop("info", None)  # ours
            upstream = b.sim.counters()["token.refresh_token"] - upstream0
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
                spy.wait(60)
    return Drain(done, upstream, span, used, calls)


def _wait_refreshed(b: Bench, d: Deployment, jump: object) -> tuple[int, float]:
    portals, started = b.size.refresh_portals, time.monotonic()
    done, span = 0, 0.0
    while done < portals and time.monotonic() - started < b.size.drain_cap:
        time.sleep(0.2)
        row = _row(
            d,
            """SELECT count(*) AS n, extract(epoch FROM max(refreshed_at) - $1) AS span
               FROM portals WHERE app = $2 AND refreshed_at >= $1""",
            jump,
            APP,
        )
        done, span = int(row["n"]), float(row["span"] or 0.0)
    return done, span


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _spy(broker: Server, output: Path) -> subprocess.Popen[bytes] | None:
    tool = _py_spy()
    if tool is None:
        return None
    argv = [tool, "record", "--pid", str(broker.pid), "--rate", "200", "--format", "raw"]
    argv += ["--nonblocking", "--output", str(output)]
    return subprocess.Popen(  # noqa: S603 - our own tool, our own child's pid
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _profiled(b: Bench, d: Deployment, name: str, tree: Path | None) -> Counter[str]:
    output = b.workdir / f"refresh-{name}.pyspy.txt"
    _drain(b, d, f"profiled-{name}", {}, tree, profile=output)
    return stage_samples(output.read_text()) if output.exists() else Counter()


def stage_samples(collapsed: str) -> Counter[str]:
    """Samples per stage from py-spy's ``raw`` (collapsed stacks) output."""
    stages: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        stages[_stage(stack)] += int(n)
    return stages


def _stage(stack: str) -> str:
    for name, fragments in STAGES:
        if any(fragment in stack for fragment in fragments):
            return name
    return "other"


__all__ = ["APP", "run", "stage_samples"]
