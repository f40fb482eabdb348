"""Section 6, steady state: one app with 250,000 portals kept fresh by 2 replicas, and the
refresher's claim explained at 1,000,000 rows (:mod:`bench.claim_plan`).

Time is compressed through the token lifetime (``Size.steady_lifetime``): a portal is
refreshed every ~0.66 lifetimes (the refresh point is jittered between 60 and 72 %), so the
replicas must sustain ``portals / (0.66 x lifetime)`` refreshes/s. The portals' refresh
times are spread uniformly over one refresh cycle as the replicas start (a steady state, not
a thundering start), the adaptive per-app rate starts at its default and has to find the
demand, and open-loop callers ask for random portals with ``min_ttl`` values below the
refresh margin (28 % of a lifetime at least): every answer must have at least that left, and
a caller should almost never wait for an interactive refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis

from bench.claim_plan import claim_plan
from bench.load import ClientProcess
from bench.procs import Server, cpu_seconds, serving
from bench.report import Bench, count, ms
from bench.seed import APP, Deployment, deploy, drop, seed_portals, start_broker

STEADY_FIRST = 3_000_000
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Share of a lifetime after which a refreshed token is refreshed again, on average.
CYCLE_SHARE = 0.66
#: The simulator's token endpoint latency while the replicas refresh (HubSpot's is ~50-300).
TOKEN_LATENCY_MS = 50
#: Callers' min_ttl as shares of the lifetime: all below the refresh margin (0.28).
CALLER_TTL_SHARES = (0.05, 0.1, 0.2)


def steady(b: Bench) -> None:
    _claim_plan(b)
    _steady_state(b)


def _claim_plan(b: Bench) -> None:
    rows = b.size.plan_rows
    plan = asyncio.run(claim_plan(b.urls.database_url, rows))
    for case, text in plan.plans.items():
        print(f"  claim_due at {rows:,} rows, {case}: EXPLAIN (ANALYZE, BUFFERS)")
        print("\n".join(f"    {line}" for line in text.splitlines()), flush=True)
    problems = plan.problems()
    b.add(
        "7 steady",
        f"claim_due at {rows:,} portal rows (index scan, no Seq Scan on portals)",
        "index scan" if not problems else "NOT an index scan",
        ", ".join(
            f"{case}: {ms(plan.execution_ms(case))}, {plan.skipped(case)} entries skipped"
            for case in plan.plans
        )
        + f"; rows loaded in {plan.load_seconds:.0f} s",
    )
    if problems:
        b.notes.append(f"CLAIM PLAN FAILURE: {'; '.join(problems)}")
    else:
        b.notes.append(
            f"claim_due at {rows:,} rows uses portals_refresh_after with refresh_after as its "
            "Index Cond in every case (custom and generic plans, due portals and none due): "
            "no Seq Scan on portals (plans printed during the run)"
        )


def _steady_state(b: Bench) -> None:
    size = b.size
    portals, lifetime = size.steady_portals, size.steady_lifetime
    needed = portals / (CYCLE_SHARE * lifetime)
    ceiling = max(250.0, 4 * needed)  # the adaptive rate's bound: never what limits here
    d = deploy(
        b.urls, b.sim, b.sim_url, BROKER_REFRESH_RATE_MAX=f"{ceiling:g}", BROKER_MIN_TTL_MAX="86400"
    )
    hubs = [STEADY_FIRST + i for i in range(portals)]
    # Minted tokens outlive the spread below at the simulator; refreshed ones live `lifetime`.
    b.sim.configure(access_token_ttl=int(lifetime) + 3600)
    try:
        seeded = asyncio.run(seed_portals(d, b.sim, hubs, lifetime=lifetime))
        b.sim.configure(
            access_token_ttl=int(lifetime),
            latency_ms={"token": TOKEN_LATENCY_MS},
            token_rate_limit=size.steady_token_limit,
        )
        with ExitStack() as stack:
            # Seeded refresh times are >= 0.6 lifetimes away: the replicas start idle, and
            # the spread below makes portals due from the moment it commits, not before.
            replicas = [
                stack.enter_context(
                    serving(
                        start_broker(
                            d, b.workdir / f"broker-steady-{i}.log", BROKER_REFRESHER_ENABLED="true"
                        )
                    )
                )
                for i in range(2)
            ]
            asyncio.run(_spread(d, lifetime))
            _measure(b, d, replicas, needed, seeded.total_s)
    finally:
        b.sim.configure(access_token_ttl=1800, latency_ms=0.0, token_rate_limit=None)
        drop(d)


async def _spread(d: Deployment, lifetime: float) -> None:
    """Each portal as if refreshed at a uniformly random moment of the last cycle: its next
    refresh falls uniformly within the next cycle, its expiry a 28-40 % margin after that."""
    conn = await asyncpg.connect(d.database_url)
    try:
        await conn.execute(
            """WITH s AS (SELECT id, random() AS u, 0.60 + random() * 0.12 AS share
                          FROM portals)
               UPDATE portals p SET
                   refresh_after = clock_timestamp()
                       + make_interval(secs => s.u * s.share * $1),
                   access_expires_at = clock_timestamp()
                       + make_interval(secs => (s.u * s.share + 1 - s.share) * $1)
               FROM s WHERE p.id = s.id""",
            lifetime,
        )
    finally:
        await conn.close()


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields from the state (3rd) on


def _with_children(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and its live ones (PostgreSQL's backends)."""
    fields = _stat(pid)
    total = sum(int(f) for f in fields[11:15])
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                child = _stat(int(proc.name))
                if int(child[1]) == pid:
                    total += int(child[11]) + int(child[12])
    return total / _CLK_TCK


def _server_pid(binary: bytes, port: int) -> int | None:
    """The process running ``binary`` whose arguments name ``port`` (the embedded stack's)."""
    wanted = str(port).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(binary) and any(
                arg == wanted or arg.endswith(b":" + wanted) for arg in argv[1:]
            ):
                return int(proc.name)
    return None


def _stack(b: Bench) -> list[int]:
    """PostgreSQL (postmaster), Valkey and OpenBao of this bench, as far as they are found."""
    postgres = _server_pid(b"/postgres", urlsplit(b.urls.database_url).port or 0)
    valkey = _server_pid(b"valkey-server", urlsplit(b.urls.redis_url).port or 0)
    return [pid for pid in (postgres, valkey, b.bao_pid) if pid is not None]


def _stack_cpu(stack: list[int]) -> float:
    """CPU seconds of the backends (with PostgreSQL's backends) and of this process, whose
    threads include the simulator."""
    own = os.times()
    return sum(_with_children(pid) for pid in stack) + own.user + own.system


def _interactive(replicas: list[Server]) -> float:
    total = 0.0
    for server in replicas:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith('broker_token_requests_total{result="refreshed"}'):
                total += float(line.split()[-1])
    return total


def _measure(b: Bench, d: Deployment, replicas: list[Server], needed: float, seed_s: float) -> None:
    size = b.size
    portals, lifetime = size.steady_portals, size.steady_lifetime
    min_ttls = [max(1, round(share * lifetime)) for share in CALLER_TTL_SHARES]
    shared = redis.Redis.from_url(d.env["BROKER_REDIS_URL"])
    rate_key = f"{d.env['BROKER_REDIS_PREFIX']}rl:{APP}"
    path = "/v1/portals/{hub}/token?app=" + APP + "&min_ttl={min_ttl}"
    callers = ClientProcess(
        {
            "mode": "rate",
            "hosts": [["127.0.0.1", r.port] for r in replicas],
            "template": {
                "path": path,
                "headers": d.auth(),
                "hubs": [STEADY_FIRST, STEADY_FIRST + portals],
                "min_ttls": min_ttls,
            },
            "rate": size.steady_caller_rate,
            "connections": 16,
            "duration": None,
            "check": True,
        }
    )
    series: list[dict[str, Any]] = []
    stack = _stack(b)
    try:
        start = _sample(b, d, replicas, shared, rate_key, stack)
        last = start
        begun = time.monotonic()
        while time.monotonic() - begun < size.steady_seconds:
            time.sleep(min(size.steady_every, size.steady_seconds - (time.monotonic() - begun)))
            now = _sample(b, d, replicas, shared, rate_key, stack)
            series.append(_interval(last, now))
            last = now
            print(f"  steady {_describe(series[-1], now)}", flush=True)
    finally:
        answers = callers.result()
        shared.close()
    _report(b, d, start, last, series, answers, needed, seed_s, min_ttls)


def _sample(
    b: Bench,
    d: Deployment,
    replicas: list[Server],
    shared: redis.Redis,
    rate_key: str,
    stack: list[int],
) -> dict[str, Any]:
    counters = b.sim.counters()
    raw = shared.hget(rate_key, "rate")
    backlog = asyncio.run(_backlog(d))
    return {
        "at": time.monotonic(),
        "calls": counters["token.refresh_token"],
        "limited": counters["token.rate_limited"],
        "interactive": _interactive(replicas),
        "cpu": sum(cpu_seconds(r.pid) for r in replicas),
        "stack_cpu": _stack_cpu(stack),
        "rate": float(raw) if raw is not None else 0.0,  # type: ignore[arg-type]
        "backlog": backlog,
    }


async def _backlog(d: Deployment) -> int:
    conn = await asyncpg.connect(d.database_url)
    try:
        due: int = await conn.fetchval(
            "SELECT count(*) FROM portals WHERE refresh_after <= (SELECT clock_timestamp())"
        )
    finally:
        await conn.close()
    return due


def _interval(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    seconds = after["at"] - before["at"]
    refreshed = (after["calls"] - after["limited"]) - (before["calls"] - before["limited"])
    return {
        "seconds": seconds,
        "refreshes_per_s": refreshed / seconds,
        "limited": after["limited"] - before["limited"],
        "interactive": after["interactive"] - before["interactive"],
        "rate": after["rate"],
        "backlog": after["backlog"],
    }


def _describe(step: dict[str, Any], now: dict[str, Any]) -> str:
    return (
        f"{step['refreshes_per_s']:.0f} refreshes/s, rate {step['rate']:.0f}/s, "
        f"{step['backlog']:,} due, {step['interactive']:.0f} interactive, "
        f"{step['limited']} 429s"
    )


def _report(
    b: Bench,
    d: Deployment,
    start: dict[str, Any],
    end: dict[str, Any],
    series: list[dict[str, Any]],
    answers: Any,
    needed: float,
    seed_s: float,
    min_ttls: list[int],
) -> None:
    size = b.size
    portals, lifetime = size.steady_portals, size.steady_lifetime
    label = f"{portals:,} portals, 2 replicas, {lifetime:g} s tokens"
    seconds = end["at"] - start["at"]
    refreshed = (end["calls"] - end["limited"]) - (start["calls"] - start["limited"])
    interactive = end["interactive"] - start["interactive"]
    limited = end["limited"] - start["limited"]
    per_s = refreshed / seconds if seconds > 0 else 0.0
    cpu_ms = (end["cpu"] - start["cpu"]) * 1000 / max(refreshed, 1)
    every = f"every {size.steady_every:g} s"
    b.add(
        "7 steady",
        f"{label}: refreshes/s (needed {needed:,.0f})",
        f"{count(per_s)} refreshes/s",
        f"{every}: "
        + ", ".join(f"{s['refreshes_per_s']:.0f}" for s in series)
        + f"; due and not yet refreshed {every}: "
        + ", ".join(f"{s['backlog']:,}" for s in series)
        + f"; {refreshed:,} refreshes in {seconds:.0f} s; seeded in {seed_s:.0f} s",
    )
    b.add(
        "7 steady",
        f"{label}: adaptive per-app rate over time (starts at 20/s)",
        f"{end['rate']:.0f}/s at the end",
        f"{every}: " + ", ".join(f"{s['rate']:.0f}" for s in series),
    )
    pct = 100 * interactive / max(refreshed, 1)
    b.add(
        "7 steady",
        f"{label}: interactive refreshes (callers waited; target < 1 %)",
        f"{interactive:,.0f} ({pct:.2f} % of refreshes)",
        f"{every}: " + ", ".join(f"{s['interactive']:.0f}" for s in series),
    )
    bad = answers.errors + sum(v for k, v in answers.statuses.items() if k != "200")
    b.add(
        "7 steady",
        f"{label}: answers with expires_in < min_ttl (must be 0)",
        f"{answers.violations}",
        f"{answers.requests:,} answers at {count(size.steady_caller_rate)} req/s open loop over "
        f"both replicas (min_ttl {min_ttls}), {bad} not 200, smallest margin "
        f"{answers.min_margin} s, p99 {ms(answers.p99_ms)}",
    )
    b.add(
        "7 steady",
        f"{label}: 429s from the simulator's token endpoint",
        f"{limited}",
        (
            "no token endpoint limit in this run: the rate follows demand"
            if size.steady_token_limit is None
            else f"the simulator's token endpoint took at most {size.steady_token_limit:g} "
            f"calls/s for the app (HubSpot's 429 beyond); the rate halves on a 429"
        ),
    )
    b.add(
        "7 steady",
        f"{label}: replica CPU per refresh",
        f"{cpu_ms:.2f} ms",
        f"/proc/<pid>/stat of both replicas over the run (serving the callers included) / "
        f"refreshes; {count(per_s / 2)} refreshes/s per replica",
    )
    stack_ms = (end["stack_cpu"] - start["stack_cpu"]) * 1000 / max(refreshed, 1) + cpu_ms
    cores = len(os.sched_getaffinity(0))
    ceiling = cores * 1000 / stack_ms if stack_ms > 0 else 0.0
    b.add(
        "7 steady",
        f"{label}: whole-stack CPU per refresh",
        f"{stack_ms:.2f} ms",
        f"replicas + PostgreSQL + Valkey + OpenBao + simulator, from /proc (robust to other load); "
        f"so this {cores}-core machine sustains at most ~{count(ceiling)} refreshes/s, i.e. "
        f"{count(ceiling * CYCLE_SHARE * lifetime)} portals at {lifetime:g} s tokens with "
        f"nothing else running, or {portals:,} portals at tokens of at least "
        f"{portals / (CYCLE_SHARE * ceiling) if ceiling else 0:,.0f} s",
    )
    b.figures["scale_250k_below_min_ttl"] = float(answers.violations)
    b.figures["scale_250k_interactive_pct"] = pct
    if answers.violations or bad:
        b.notes.append(f"STEADY FAILURE: {answers.violations} answers below min_ttl, {bad} bad")
