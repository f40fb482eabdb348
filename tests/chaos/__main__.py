"""``make chaos``: every fault scenario at its default size (50 portals; ``--portals 1000``
for the long run), one line each, then a summary line ``chaos: N passed, M failed``. Starts
its own backends (like the test session); the Kubernetes-shaped harness
(:mod:`tests.chaos.k8s`, ``--only k8s``) starts HA ones of its own."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time

from broker.adapters.postgres.migrate import migrate
from broker.dev.simulator import Simulator, run_in_thread
from tests.backends import provide_backends
from tests.chaos import k8s
from tests.chaos.scenarios import DEFAULT, SCENARIOS, SMALL, Size
from tests.helpers import admin_sql, database_named, make_env


async def _fresh_database(admin_url: str) -> str:
    import asyncpg

    name = f"chaos_{secrets.token_hex(5)}"
    await admin_sql(admin_url, f"CREATE DATABASE {name}")
    url = database_named(admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--small", action="store_true", help="the reduced size of make test")
    parser.add_argument("--portals", type=int, help="portals per scenario (default 50)")
    parser.add_argument("--only", action="append", choices=[*SCENARIOS, "k8s"])
    parser.add_argument("--seconds", type=float, help="load scenarios' length (default 60)")
    args = parser.parse_args()
    size = SMALL if args.small else DEFAULT
    if args.portals:
        size = Size(portals=args.portals, callers=size.callers, seconds=size.seconds)
    if args.seconds:
        size = Size(portals=size.portals, callers=size.callers, seconds=args.seconds)
    passed = failed = 0
    started = time.monotonic()
    with provide_backends() as backends:
        sim = Simulator()
        with run_in_thread(sim) as sim_url:
            for name in [n for n in args.only or list(SCENARIOS) if n in SCENARIOS]:
                sim.reset()
                database = asyncio.run(_fresh_database(backends.database_url))
                env = make_env(backends, database, sim_url, BROKER_LOG_LEVEL="INFO")
                try:
                    result = SCENARIOS[name](env, sim, sim_url, size)
                    line = result.line()
                    ok = result.passed
                except Exception as exc:  # a scenario that crashes is a failed scenario
                    line, ok = f"{name}: FAILED: crashed: {exc!r}", False
                print(line, flush=True)
                passed, failed = passed + ok, failed + (not ok)
            if not args.only or any(name.startswith("k8s") for name in args.only):
                for result in k8s.run(sim, sim_url, k8s.SMALL if args.small else k8s.FULL):
                    print(result.line(), flush=True)
                    passed, failed = passed + result.passed, failed + (not result.passed)
    minutes = (time.monotonic() - started) / 60
    print(f"chaos: {passed} passed, {failed} failed in {minutes:.1f} min", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
