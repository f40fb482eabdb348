"""``make bench`` (``python -m bench``): start the embedded backends and the HubSpot simulator,
run every section, print one table and write it to ``bench/results.md``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench import gateway, hot, memory, refresh, scenarios, steady
from bench.load import wrk_path, wrk_version
from bench.procs import cpu_plan
from bench.report import FULL, SMOKE, Bench, Size, render
from broker import logs
from broker.dev.simulator import Simulator, run_in_thread
from broker.dev.stack import BackendUrls, EmbeddedStack

RESULTS = Path(__file__).with_name("results.md")
SECTIONS: dict[str, Callable[[Bench], None]] = {
    "hot": hot.run,  # 1 hot path, 2 cold path, 5 abuse: one pinned broker process
    "herd": scenarios.herd,
    "scale": scenarios.scale,
    "refresh": refresh.run,  # 6 refresh: throughput and CPU per proactive refresh
    "steady": steady.steady,  # 7: 250,000 portals on 2 replicas; claim_due at 1,000,000 rows
    "memory": memory.memory,  # 8 memory per cached token
    "gateway": gateway.run,  # 9 gateway added latency (last: its two figures end the output)
}


def run_bench(
    urls: BackendUrls,
    sim: Simulator,
    sim_url: str,
    size: Size,
    *,
    output: Path,
    use_wrk: bool = True,
    bao_pid: int | None = None,
    only: tuple[str, ...] | None = None,
    baseline_tree: Path | None = None,
) -> str:
    """Run every section against these backends; returns the report (also written)."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="htb-bench-"))
    use_wrk = use_wrk and wrk_path() is not None
    target_cpus, load_cpus = cpu_plan()
    bench = Bench(urls, sim, sim_url, size, workdir, use_wrk, target_cpus, load_cpus, bao_pid)
    bench.baseline_tree = baseline_tree
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    bench.notes.append(f"load average (1, 5, 15 min) at the start: {load}")
    if target_cpus is not None:
        bench.notes.append(
            f"hot path: each server on CPU {sorted(target_cpus)}, load on {sorted(load_cpus or ())}"
        )
    try:
        for name in only or tuple(SECTIONS):
            print(f"{name} ...", flush=True)
            SECTIONS[name](bench)
    except BaseException:
        print(f"bench failed; process logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    tool = f"{wrk_version()} for closed loops" if use_wrk else "python client (wrk not found)"
    tool += "; bench.client (Python, separate process) for cold path, herd, scale, abuse"
    report = render(bench, load_tool=tool, elapsed=time.monotonic() - started)
    output.write_text(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="trivial sizes, seconds")
    parser.add_argument("--scale", help="portal counts, comma-separated (1000,10000,100000)")
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load client")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--steady-minutes", type=float, help="steady state duration (10)")
    parser.add_argument("--steady-portals", type=int, help="steady state portals (250000)")
    parser.add_argument(
        "--steady-lifetime", type=float, help="steady state token lifetime, seconds (3600)"
    )
    parser.add_argument(
        "--steady-token-limit", type=float, help="steady state: token endpoint calls/s per app"
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="refresh: a checkout of the code to compare with, drained beside this one",
    )
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    if args.scale:
        size = replace(size, scale=tuple(int(n) for n in args.scale.split(",")))
    if args.steady_minutes:
        size = replace(size, steady_seconds=args.steady_minutes * 60)
    if args.steady_portals:
        size = replace(size, steady_portals=args.steady_portals)
    if args.steady_lifetime:
        size = replace(size, steady_lifetime=args.steady_lifetime)
    if args.steady_token_limit:
        size = replace(size, steady_token_limit=args.steady_token_limit)
    logs.configure("WARNING", "console")
    sim = Simulator()
    print("starting embedded PostgreSQL, Valkey, OpenBao and the simulator ...", flush=True)
    # fsync stays on (fast=False): refresh commits cost what they cost in production.
    with EmbeddedStack(fast=False) as stack, run_in_thread(sim) as sim_url:
        report = run_bench(
            stack.urls,
            sim,
            sim_url,
            size,
            output=args.output,
            use_wrk=not args.no_wrk,
            bao_pid=stack.pids()["openbao"],
            only=tuple(args.only.split(",")) if args.only else tuple(SECTIONS),
            baseline_tree=args.baseline_tree.resolve() if args.baseline_tree else None,
        )
    print()
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
