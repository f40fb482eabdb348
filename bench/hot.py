"""Sections 1, 2 and 5 on one broker process: the hot path against three baselines, the cold
path, and one abusive caller among normal ones.

The server under test runs alone on one core and the load generator on another
(:func:`bench.procs.cpu_plan`), so every target gets the same single core. The broker runs
exactly as in production (``python -m broker serve``, JSON logs at INFO, metrics, audit),
with only the background refresher off.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import sys
import time
from typing import Any

import httpx
import hvac
from prometheus_client.parser import text_string_to_metric_families

from bench.load import ClientProcess, LoadResult, closed_loop
from bench.procs import Server, cpu_seconds, free_port, pin_threads, serving
from bench.report import Bench, count, ms
from bench.seed import APP, Deployment, deploy, drop, seed_portals, start_broker

HOT_HUB = 1
NORMAL_HUBS = range(100, 110)
COLD_FIRST = 10_000
NORMAL_CALLERS = (
    4  # callers 1-4 (the i % 4 below); caller 5 is the abuser; caller 0 is not rate limited
)
ABUSER = 1 + NORMAL_CALLERS


def _line(result: LoadResult) -> str:
    return f"{count(result.rps)} req/s · p50 {ms(result.p50_ms)} · p99 {ms(result.p99_ms)}"


def _checked(result: LoadResult, name: str) -> LoadResult:
    bad = result.errors + sum(v for k, v in result.statuses.items() if k != "200")
    if bad or result.requests == 0:
        raise RuntimeError(f"{name}: {bad} failed answers of {result.requests}: {result}")
    return result


def _measure(
    b: Bench, pid: int | None, server_port: int, path: str, headers: dict[str, str], name: str
) -> tuple[LoadResult, float | None]:
    """A warm-up, then the measured closed loop; also the share of a core the server got
    (``pid``'s CPU time over the run): well under 100% means something else took its core."""
    size = b.size
    closed = functools.partial(
        closed_loop,
        ("127.0.0.1", server_port),
        path,
        headers=headers,
        connections=size.connections,
        cpus=b.load_cpus,
        use_wrk=b.use_wrk,
    )
    closed(seconds=size.warmup)
    cpu = None if pid is None else cpu_seconds(pid)
    result = _checked(closed(seconds=size.seconds), name)
    if cpu is None or pid is None:
        return result, None
    return result, (cpu_seconds(pid) - cpu) / result.seconds


def _efficiency(result: LoadResult, share: float | None) -> str:
    if share is None:
        return "server CPU unknown"
    return f"server busy {share:.0%} of a core, {count(result.rps / max(share, 1e-9))} req/CPU-s"


def run(b: Bench) -> None:
    size = b.size
    d = deploy(b.urls, b.sim, b.sim_url, callers=2 + NORMAL_CALLERS)
    cold = list(range(COLD_FIRST, COLD_FIRST + size.cold_serial + size.cold_concurrent))
    try:
        asyncio.run(seed_portals(d, b.sim, [HOT_HUB, *NORMAL_HUBS, *cold], lifetime=1800))
        log = b.workdir / "broker-hot.log"
        with serving(start_broker(d, log, cpus=b.target_cpus)) as broker:
            path = f"/v1/portals/{HOT_HUB}/token?app={APP}"
            first = httpx.get(broker.url + path, headers=d.auth(), timeout=30)
            first.raise_for_status()
            body = first.text
            hot, share = _measure(b, broker.pid, broker.port, path, d.auth(), "broker")
            b.add(
                "1 hot path",
                "broker GET /v1/portals/{id}/token, cached",
                _line(hot),
                f"{hot.tool}, {size.connections} conns, {size.seconds:g} s, {len(body)} B body; "
                + _efficiency(hot, share),
            )
            b.efficiency["hot"] = hot.rps / share if share else 0.0
            b.figures["hot_path_p99_ms"] = hot.p99_ms
            _cold(b, d, broker, cold)
            _abuse(b, d, broker)
        _baselines(b, body, hot)
    finally:
        drop(d)


def _baselines(b: Bench, body: str, hot: LoadResult) -> None:
    size = b.size
    for kind, label, ratio in (
        ("starlette", "bare Starlette JSON route", "hot_path_vs_starlette"),
        ("raw", "raw ASGI callable", "hot_path_vs_raw_asgi"),
    ):
        port = free_port()
        argv = [sys.executable, "-m", "bench.targets", kind, "--port", str(port)]
        argv += ["--size", str(len(body))]
        log = b.workdir / f"{kind}.log"
        server = Server(kind, argv, port=port, log=log, cpus=b.target_cpus, ready_path="/livez")
        with serving(server):
            path = f"/v1/portals/{HOT_HUB}/token"
            result, share = _measure(b, server.pid, port, path, {}, kind)
        detail = f"{result.tool}, same uvicorn options; {_efficiency(result, share)}"
        b.add("1 hot path", label, _line(result), detail)
        b.ratios[ratio] = hot.rps / result.rps
        b.efficiency[ratio] = result.rps / share if share else 0.0
    result, share = _openbao_kv(b, body)
    b.efficiency["hot_path_vs_openbao_kv"] = result.rps / share if share else 0.0
    detail = f"{result.tool}, X-Vault-Token, {len(body)} B secret; {_efficiency(result, share)}"
    pinned = b.bao_pid is not None and b.target_cpus is not None
    detail += ", pinned to the same core" if pinned else ", not pinned (pid unknown)"
    b.add("1 hot path", "OpenBao KV v2 read (GET /v1/secret/data/...)", _line(result), detail)
    b.ratios["hot_path_vs_openbao_kv"] = hot.rps / result.rps
    if size.seconds < 5:
        b.notes.append("smoke size: numbers are not meaningful")


def _openbao_kv(b: Bench, body: str) -> tuple[LoadResult, float | None]:
    path = f"bench-{secrets.token_hex(4)}/token"
    client = hvac.Client(url=b.urls.vault_addr, token=b.urls.vault_token, timeout=10)
    try:
        client.secrets.kv.v2.create_or_update_secret(
            path=path, secret={"token_response": body}, mount_point="secret"
        )
    finally:
        client.adapter.close()
    port = int(httpx.URL(b.urls.vault_addr).port or 8200)
    if b.bao_pid is not None:
        pin_threads(b.bao_pid, b.target_cpus)
    try:
        token = {"X-Vault-Token": b.urls.vault_token}
        return _measure(b, b.bao_pid, port, f"/v1/secret/data/{path}", token, "openbao")
    finally:
        if b.bao_pid is not None:
            pin_threads(b.bao_pid, None)


def _cold(b: Bench, d: Deployment, broker: Server, hubs: list[int]) -> None:
    size = b.size
    template = {"path": "/v1/portals/{hub}/token?app=" + APP, "headers": d.auth()}
    serial = hubs[: size.cold_serial]
    concurrent = hubs[size.cold_serial :]
    for chunk, conns in ((serial, 1), (concurrent, size.connections)):
        spec: dict[str, Any] = {
            "mode": "once",
            "hosts": [["127.0.0.1", broker.port]],
            "template": {**template, "hubs": [chunk[0], chunk[-1] + 1], "min_ttls": [300]},
            "connections": conns,
            "check": True,
        }
        before, cpu = cold_counts(broker.url), cpu_seconds(broker.pid)
        result = _checked(ClientProcess(spec, cpus=b.load_cpus).result(), "cold path")
        cpu = cpu_seconds(broker.pid) - cpu
        calls, misses = (a - b for a, b in zip(cold_counts(broker.url), before, strict=True))
        per_miss = calls / max(misses, 1)
        cpu_ms = 1000 * cpu / max(misses, 1)
        b.add(
            "2 cold path",
            f"first request per portal (Postgres read + Transit decrypt), {conns} conns",
            f"p50 {ms(result.p50_ms)} · p99 {ms(result.p99_ms)}",
            f"{count(result.requests)} distinct portals, {count(result.rps)} req/s, "
            f"{per_miss:.3f} Transit calls per cache miss ({calls:.0f} for {misses:.0f}: decrypt "
            f"and fingerprint HMAC), broker CPU {cpu_ms:.3f} ms per miss, python client",
        )
        if conns > 1:
            b.figures["cold_path_rps_50"] = result.rps
            b.figures["cold_path_p99_ms_50"] = result.p99_ms
            b.figures["transit_calls_per_miss"] = per_miss


#: Vault operations that are Transit calls (a cache fill may make any of them).
TRANSIT_OPERATIONS = frozenset({"encrypt", "decrypt", "rewrap", "hmac", "verify"})


def cold_counts(url: str) -> tuple[float, float]:
    """(Transit requests of every kind: decrypts and fingerprint HMACs alike, token requests
    that missed the cache) from ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    calls = misses = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "broker_vault_requests_total":
                transit = sample.labels.get("operation") in TRANSIT_OPERATIONS
                calls += sample.value if transit else 0
            elif sample.name == "broker_token_requests_total":
                hit = sample.labels.get("result") in ("db_hit", "refreshed")
                misses += sample.value if hit else 0
    return calls, misses


def _abuse(b: Bench, d: Deployment, broker: Server) -> None:
    size = b.size
    normal = {
        "mode": "rate",
        "hosts": [["127.0.0.1", broker.port]],
        "targets": [
            {
                "path": f"/v1/portals/{hub}/token?app={APP}",
                "headers": d.auth(1 + i % NORMAL_CALLERS),
            }
            for i, hub in enumerate(NORMAL_HUBS)
        ],
        "rate": size.normal_rate,
        "connections": 16,
        "duration": size.abuse_seconds,
    }
    abuser = {
        **normal,
        "targets": [{"path": f"/v1/portals/{HOT_HUB}/token?app={APP}", "headers": d.auth(ABUSER)}],
        "rate": size.abuse_rate,
        "connections": 64,
        "duration": size.abuse_seconds + 1.0,
    }
    before = ClientProcess(normal, cpus=b.load_cpus).result()
    noisy = ClientProcess(abuser, cpus=b.load_cpus)
    time.sleep(0.5)  # the abuser is at full rate before the normal callers start
    during = ClientProcess(normal, cpus=b.load_cpus).result()
    loud = noisy.result()
    shape = f"{NORMAL_CALLERS} callers, {count(size.normal_rate)} req/s in all, open loop"
    b.add(
        "5 abuse",
        "normal callers' latency, alone",
        f"p50 {ms(before.p50_ms)} · p99 {ms(before.p99_ms)}",
        f"{shape}; statuses {before.statuses}",
    )
    b.add(
        "5 abuse",
        f"normal callers' latency, one caller at {count(size.abuse_rate)} req/s",
        f"p50 {ms(during.p50_ms)} · p99 {ms(during.p99_ms)}",
        f"{shape}; statuses {during.statuses}",
    )
    b.add(
        "5 abuse",
        "the abusive caller",
        f"{count(loud.rps)} req/s sent · p99 {ms(loud.p99_ms)}",
        f"statuses {loud.statuses} (429 = per-caller limit)",
    )
