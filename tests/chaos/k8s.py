"""The Kubernetes-shaped fault harness: three ``broker serve`` replicas behind a
:class:`~tests.chaos.balancer.Balancer` (an endpoints controller polling ``/readyz`` every
second, routing only to ready replicas), on backends in their HA shape — a PostgreSQL
primary with a synchronous standby behind a multi-host DSN, Valkey with a replica and three
sentinels, OpenBao behind a fault proxy — under steady load from callers over many portals.

In order: a rolling restart of the three replicas (start one, wait until it is routed,
SIGTERM the old one: drain, exit; at reduced size only the first is replaced), Redis down,
Vault sealed, Vault unreachable, a Sentinel failover and a PostgreSQL failover, both while
refreshes are running (the PostgreSQL primary killed, the standby promoted two seconds
later, as a failover manager would). Each prints one line: failed
caller requests (every portal of the steady load holds a token valid for its ``min_ttl``,
so each failure broke a promise), requests and p99; the failovers also lost tokens and false
needs_reauth; the rolling restart the new replicas' cold-start p99 and Transit calls per
cache miss.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError
from redis.sentinel import MasterNotFoundError, Sentinel

from bench.hot import cold_counts
from bench.load import ClientProcess, LoadResult
from bench.seed import APP, Deployment, deploy, seed_portals
from broker.adapters.vault import VaultAdapter
from broker.config import SentinelUrl
from broker.core.models import PortalKey
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls, EmbeddedStack
from tests.chaos.balancer import Balancer
from tests.chaos.cluster import Replica, start_replica
from tests.chaos.scenarios import Result
from tests.faultproxy import FaultProxy

STEADY_FIRST = 20_000_000  # the steady load's portals: tokens valid for 30 minutes
STORM_FIRST = 21_000_000  # portals refreshed on every request during the PostgreSQL failover


@dataclass(frozen=True)
class Size:
    portals: int
    callers: int
    rate: float  # steady load, requests per second
    window: float  # seconds each fault lasts
    storm: int  # portals refreshed over and over during the failovers
    restarts: int  # replicas replaced in the rolling restart (of 3)


SMALL = Size(portals=30, callers=16, rate=50.0, window=1.0, storm=6, restarts=1)
FULL = Size(portals=1000, callers=50, rate=300.0, window=60.0, storm=50, restarts=3)


class Harness:
    def __init__(self, sim: Simulator, sim_url: str, size: Size) -> None:
        self.sim, self.size = sim, size
        self.workdir = Path(tempfile.mkdtemp(prefix="htb-k8s-"))
        self.replicas: list[Replica] = []
        self._cleanup = ExitStack()  # what started so far is stopped, even if __init__ fails
        self._cleanup.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        try:
            self._start(sim, sim_url, size)
        except BaseException:
            self._cleanup.close()
            raise

    def _start(self, sim: Simulator, sim_url: str, size: Size) -> None:
        self.stack = EmbeddedStack(postgres_standby=True, redis_sentinel=True).start()
        self._cleanup.callback(self.stack.stop)
        urls = self.stack.urls
        vault = httpx.URL(urls.vault_addr)
        self.vault_proxy = FaultProxy(vault.host, vault.port or 8200)
        self._cleanup.callback(self.vault_proxy.close)
        proxied = BackendUrls(
            urls.database_url,
            urls.redis_url,
            f"http://127.0.0.1:{self.vault_proxy.port}",
            urls.vault_token,
        )
        self.deployment: Deployment = deploy(
            proxied,
            sim,
            sim_url,
            BROKER_CALLER_RATE="100000",  # one caller drives all the load
            BROKER_DRAIN_SECONDS="2",  # the balancer polls every second
            BROKER_LOG_LEVEL="INFO",
            BROKER_VAULT_TIMEOUT="2",
        )
        self.steady = list(range(STEADY_FIRST, STEADY_FIRST + size.portals))
        self.storm = list(range(STORM_FIRST, STORM_FIRST + size.storm))
        asyncio.run(seed_portals(self.deployment, sim, self.steady, lifetime=1800))
        asyncio.run(seed_portals(self.deployment, sim, self.storm, lifetime=600))
        self.balancer = Balancer().start()
        self._cleanup.callback(self._stop_replicas)
        self._cleanup.callback(self.balancer.close)
        self._started = 0
        for _ in range(3):
            self._add_replica()

    def _stop_replicas(self) -> None:
        for replica in self.replicas:  # all drain at once
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            replica.terminate()

    def close(self) -> None:
        self._cleanup.close()

    # --- replicas -----------------------------------------------------------------------------
    def _add_replica(self) -> Replica:
        self._started += 1
        log = self.workdir / f"replica-{self._started}.log"
        replica = start_replica(self.deployment.env, log)
        self.replicas.append(replica)
        self.balancer.add(replica.url)
        self.balancer.wait_ready(replica.url)
        return replica

    def warm(self) -> None:
        """Every replica has served every steady portal: what it caches is what it can serve
        while a backend is gone (a replica never asked for a portal cannot decrypt it then)."""
        for replica in self.replicas:
            for hub in self.steady:
                httpx.get(
                    f"{replica.url}/v1/portals/{hub}/token",
                    params={"app": APP},
                    headers=self.deployment.auth(),
                    timeout=30,
                ).raise_for_status()

    # --- load ---------------------------------------------------------------------------------
    def steady_load(self) -> ClientProcess:
        spec: dict[str, Any] = {
            "mode": "rate",
            "hosts": [["127.0.0.1", self.balancer.port]],
            "template": {
                "path": "/v1/portals/{hub}/token?app=" + APP + "&min_ttl={min_ttl}",
                "headers": self.deployment.auth(),
                "hubs": [self.steady[0], self.steady[-1] + 1],
                "min_ttls": [300],
            },
            "connections": self.size.callers,
            "rate": self.size.rate,
            "check": True,
        }
        return ClientProcess(spec)

    def under_load(self, name: str, fault: Callable[[Result], None]) -> Result:
        result = Result(name)
        load = self.steady_load()
        settle = min(1.0, self.size.window / 2)  # load before and after the fault
        time.sleep(settle)
        try:
            fault(result)
            time.sleep(settle)
        finally:
            figures = load.result()
        _report(result, figures)
        return result


def _report(result: Result, load: LoadResult) -> None:
    failed = load.errors + sum(v for k, v in load.statuses.items() if k != "200")
    result.figures = {
        "failed": failed,
        "requests": load.requests,
        "p99_ms": round(load.p99_ms, 1),
        **result.figures,
    }
    if failed:
        result.problems.append(f"{failed} failed caller requests ({load.statuses})")
    if load.violations:
        result.problems.append(f"{load.violations} answers below min_ttl")


# --- scenarios ----------------------------------------------------------------------------------
def rolling_restart(h: Harness) -> Result:
    def restart_all(result: Result) -> None:
        cold_p99: list[float] = []
        decrypts = misses = prewarmed = 0.0
        for old in list(h.replicas)[: h.size.restarts]:
            new = h._add_replica()  # maxSurge 1: the new pod is routed to before the old goes
            # Deleting a pod: the kubelet sends SIGTERM while the endpoints controller takes
            # the terminating pod out of the Service, which reaches every node a moment
            # later (here 1 s); the replica's drain period (2 s) covers that moment.
            old.process.send_signal(signal.SIGTERM)
            removal = threading.Timer(1.0, h.balancer.remove, [old.url])
            removal.start()
            old.process.wait(60)
            removal.join()
            h.replicas.remove(old)
            time.sleep(min(1.0, h.size.window / 2))  # the new one serves before the next goes
            cold_p99.append(_p99_ms(new.url))
            d, m = cold_counts(new.url)
            decrypts, misses = decrypts + d, misses + m
            prewarmed += _prewarmed(new)
        result.figures.update(
            cold_p99_ms=round(max(cold_p99), 1),
            prewarmed=int(prewarmed),
            cache_misses=int(misses),
            transit_calls=int(decrypts),
            # Tokens loaded = pre-warmed before turning ready + loaded on a cache miss after.
            transit_calls_per_miss=round(decrypts / max(misses + prewarmed, 1.0), 3),
        )

    return h.under_load("k8s_rolling_restart", restart_all)


def redis_down(h: Harness) -> Result:
    def fault(_: Result) -> None:
        for name in ("valkey", "valkey_replica"):
            h.stack.freeze(name)
        time.sleep(h.size.window)
        for name in ("valkey", "valkey_replica"):
            h.stack.thaw(name)

    return h.under_load("k8s_redis_down", fault)


def vault_sealed(h: Harness) -> Result:
    def fault(_: Result) -> None:
        h.stack.seal_vault()
        time.sleep(h.size.window)
        h.stack.unseal_vault()

    return h.under_load("k8s_vault_sealed", fault)


def vault_unreachable(h: Harness) -> Result:
    def fault(_: Result) -> None:
        h.vault_proxy.set("blackhole")
        time.sleep(h.size.window)
        h.vault_proxy.set("pass")

    return h.under_load("k8s_vault_unreachable", fault)


@contextmanager
def closing_sentinels(watcher: Sentinel) -> Iterator[None]:
    try:
        yield
    finally:
        for client in watcher.sentinels:
            client.close()


@contextmanager
def refresh_storm(h: Harness, result: Result, *, must_not_fail: bool = False) -> Iterator[None]:
    """While the block runs, every storm portal is refreshed over and over (each request
    asks for more than its token has left; HubSpot rotates refresh tokens). Afterwards each
    portal's live refresh token is checked against the simulator: 0 lost, 0 false
    needs_reauth."""
    answers: list[int] = []
    stop = threading.Event()

    def storm() -> None:
        with httpx.Client(base_url=h.balancer.url, headers=h.deployment.auth(), timeout=60) as c:
            while not stop.is_set():
                for hub in h.storm:
                    answer = c.get(f"/v1/portals/{hub}/token", params={"app": APP, "min_ttl": 1500})
                    answers.append(answer.status_code)

    refreshes = h.sim.counters().get("token.refresh_token", 0)
    h.sim.configure(rotate_refresh_tokens=True, latency_ms={"token": 50}, access_token_ttl=600)
    stormers = [threading.Thread(target=storm, daemon=True) for _ in range(4)]
    for thread in stormers:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in stormers:
            thread.join(120)
        h.sim.configure(rotate_refresh_tokens=False, latency_ms=0, access_token_ttl=1800)
    lost, false_reauth = asyncio.run(_check_refresh_tokens(h))
    result.figures.update(
        refreshes=h.sim.counters().get("token.refresh_token", 0) - refreshes,
        storm_requests=len(answers),
        storm_failed=sum(status != 200 for status in answers),
        lost_tokens=lost,
        false_needs_reauth=false_reauth,
    )
    if lost:
        result.problems.append(f"{lost} refresh tokens lost")
    if false_reauth:
        result.problems.append(f"{false_reauth} portals wrongly marked needs_reauth")
    if must_not_fail and result.figures["storm_failed"]:
        result.problems.append(f"{result.figures['storm_failed']} refresh requests failed")


def sentinel_failover(h: Harness) -> Result:
    """The Redis master is killed during refreshes; the sentinels promote the replica.
    Redis is advisory: not one storm refresh may fail either."""

    def fault(result: Result) -> None:
        sentinels = SentinelUrl.parse(h.stack.urls.redis_url)
        assert sentinels is not None
        watcher = Sentinel(list(sentinels.sentinels), socket_timeout=0.5)
        replica_port = h.stack.processes["valkey_replica"].port
        if _master_port(watcher, sentinels.master) != h.stack.processes["valkey"].port:
            result.problems.append("the sentinels did not see the original master first")
            return
        with closing_sentinels(watcher), refresh_storm(h, result, must_not_fail=True):
            time.sleep(1.0)
            h.stack.kill("valkey")
            killed = time.monotonic()
            while _master_port(watcher, sentinels.master) != replica_port:
                if time.monotonic() - killed > 30:
                    result.problems.append("the sentinels never promoted the replica")
                    return
                time.sleep(0.1)
            result.figures["promoted_after_s"] = round(time.monotonic() - killed, 2)
            time.sleep(h.size.window / 2)

    return h.under_load("k8s_sentinel_failover", fault)


def postgres_failover(h: Harness) -> Result:
    """The primary is killed during refreshes; the standby is promoted two seconds later."""

    def fault(result: Result) -> None:
        with refresh_storm(h, result):
            time.sleep(1.0)
            h.stack.kill("postgres")
            time.sleep(2.0)  # a failover manager notices, then promotes
            h.stack.promote_standby()
            time.sleep(h.size.window / 2)

    return h.under_load("k8s_postgres_failover", fault)


def _master_port(watcher: Sentinel, master: str) -> int | None:
    try:
        return int(watcher.discover_master(master)[1])
    except (MasterNotFoundError, RedisError):  # mid-failover: no master agreed on yet
        return None


async def _check_refresh_tokens(h: Harness) -> tuple[int, int]:
    """Per storm portal: its stored refresh token is live at the simulator, or the journal
    row the next holder would adopt (the newest unapplied one written from this version or
    later, as ``newer_journal_entry`` picks it) holds one that is. Else it is lost."""
    settings = h.deployment.settings
    conn = await asyncpg.connect(settings.database_url.get())
    vault = VaultAdapter(settings)
    await vault.login()
    lost = false_reauth = 0
    try:
        for hub in h.storm:
            key = PortalKey(APP, hub)
            row = await conn.fetchrow(
                "SELECT id, state, refresh_ct, version FROM portals WHERE app = $1 AND hub_id = $2",
                APP,
                hub,
            )
            journaled = await conn.fetch(
                """SELECT refresh_ct FROM token_journal
                   WHERE portal_id = $1 AND applied_at IS NULL AND base_version >= $2
                   ORDER BY id DESC LIMIT 1""",
                row["id"],
                row["version"],
            )
            candidates = [row["refresh_ct"], *(j["refresh_ct"] for j in journaled)]
            tokens = [
                t
                for ct in candidates
                if ct is not None
                for t in await vault.decrypt([(ct, key.context("refresh"))])
            ]
            if not any(h.sim.is_refresh_token_valid(t) for t in tokens):
                lost += 1
            if row["state"] == "needs_reauth":
                false_reauth += 1
    finally:
        await vault.close()
        await conn.close()
    return lost, false_reauth


SCENARIOS: dict[str, Callable[[Harness], Result]] = {
    "k8s_rolling_restart": rolling_restart,
    "k8s_redis_down": redis_down,
    "k8s_vault_sealed": vault_sealed,
    "k8s_vault_unreachable": vault_unreachable,
    "k8s_sentinel_failover": sentinel_failover,
    "k8s_postgres_failover": postgres_failover,
}


def run(sim: Simulator, sim_url: str, size: Size) -> list[Result]:
    """Every scenario in order on one harness (each leaves the backends serving)."""
    harness = Harness(sim, sim_url, size)
    results = []
    try:
        for name, scenario in SCENARIOS.items():
            try:
                harness.warm()
                results.append(scenario(harness))
            except Exception as exc:  # a scenario that crashes is a failed scenario
                results.append(Result(name, problems=[f"crashed: {exc!r}"]))
    finally:
        harness.close()
    return results


def _prewarmed(replica: Replica) -> int:
    """How many tokens the replica pre-warmed (its ``prewarm.done`` log event)."""
    for line in replica.log.read_text().splitlines():
        if '"prewarm.done"' in line:
            return int(json.loads(line)["portals"])
    return 0


def _p99_ms(url: str) -> float:
    """p99 of the token route's latency at ``url`` since it started, from its histogram (the
    upper bound of the bucket that holds the 99th percentile)."""
    buckets: list[tuple[float, float]] = []
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "broker_http_request_duration_seconds_bucket"
                and sample.labels.get("route") == "token"
                and sample.labels.get("status_class") == "2xx"
            ):
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= 0.99 * total:
            return bound * 1000
    return 0.0
