"""Commands that are local by nature: ``serve``, ``dev``, ``migrate``, ``check-config``.
They run with this process's own settings, never against ``--url``."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from broker.cli._output import EXIT_FAILED, Out
from broker.config import Settings


async def migrate(settings: Settings, args: argparse.Namespace, out: Out) -> None:
    from broker.app import run_migrations

    applied = await run_migrations(settings)
    out.emit({"applied": applied}, "applied: " + (", ".join(applied) if applied else "nothing"))


async def check_config(settings: Settings, args: argparse.Namespace, out: Out) -> None:
    from broker.app import probe_backends

    report = {"settings": "ok"}
    if not args.offline:
        report.update(await probe_backends(settings))
    out.emit(report, "\n".join(f"{k:10} {v}" for k, v in report.items()))
    if any(v != "ok" for v in report.values()):
        raise SystemExit(EXIT_FAILED)


def serve(settings: Settings, args: argparse.Namespace) -> None:
    from broker import server

    overrides = {"host": args.host, "port": args.port, "public_port": args.public_port}
    server.run(replace(settings, **{k: v for k, v in overrides.items() if v is not None}))


def register(sub: Any) -> None:
    run = sub.add_parser("serve", help="serve the HTTP API (and the refresher)")
    run.add_argument("--host", help="internal listener address (default BROKER_HOST)")
    run.add_argument("--port", type=int, help="internal listener port (default BROKER_PORT)")
    run.add_argument(
        "--public-port", type=int, help="install-flow listener port (default BROKER_PUBLIC_PORT)"
    )
    dev = sub.add_parser("dev", help="embedded stack + HubSpot simulator + broker (make run)")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--public-port", type=int, default=8081)
    dev.add_argument("--simulator-port", type=int, default=8090)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(local=migrate)
    check = sub.add_parser("check-config", help="validate settings and reach every backend")
    check.add_argument("--offline", action="store_true", help="only validate the settings")
    check.set_defaults(local=check_config)
