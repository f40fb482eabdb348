"""``broker`` — the command line (also ``python -m broker``).

Every command runs either locally, on the backends with the same ``BROKER_*`` settings as the
server, or against a running broker's management API with ``--url`` (``BROKER_URL``) and a
caller key or workload JWT: the same commands, the same output. ``--json`` prints machine
output for scripts. Exit codes: 0 ok, 1 the operation failed (backend down, not found,
refused...), 2 bad arguments or configuration. Secrets are never taken as arguments (they
would show in ``ps`` and shell history): client secrets come from stdin or a file, caller
keys from the environment or a file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

from broker.cli import apps, callers, events, keys, portals, server
from broker.cli._ops import Operations
from broker.cli._output import EXIT_FAILED, EXIT_USAGE, Out
from broker.config import Settings, load_settings
from broker.errors import BrokerError, ConfigError

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "build_parser", "main"]

Command = Callable[[Operations, argparse.Namespace, Out], Coroutine[Any, Any, None]]
LocalCommand = Callable[[Settings, argparse.Namespace, Out], Coroutine[Any, Any, None]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    where = parser.add_argument_group(
        "remote", "run the command against a broker's management API (no backend credentials)"
    )
    where.add_argument("--url", help="the broker's internal URL (default BROKER_URL)")
    where.add_argument("--key-file", help="a caller key in a file (or BROKER_CALLER_KEY)")
    where.add_argument("--jwt-file", help="a workload JWT in a file, e.g. a projected token")
    where.add_argument(
        "--cacert", help="trust exactly this CA bundle (default: public CAs plus BROKER_CA_BUNDLE)"
    )
    where.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.register(sub)
    apps.register(sub)
    callers.register(sub)
    portals.register(sub)
    keys.register(sub)
    events.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Out(args.json)
    if args.command == "dev":
        from broker.dev.run import run_dev

        code: int = run_dev(
            port=args.port, public_port=args.public_port, simulator_port=args.simulator_port
        )
        return code
    if getattr(args, "jwt_subject", None) and not args.jwt_issuer:
        print("error: --jwt-subject needs --jwt-issuer", file=sys.stderr)
        return EXIT_USAGE
    import os

    url = args.url or os.environ.get("BROKER_URL")
    run: Command | None = getattr(args, "run", None)
    try:
        if url and run is not None:
            return _run(out, lambda: _remote(url, args, out, run))
        settings = load_settings()
    except ConfigError as exc:
        return _config_error(exc)
    if args.command == "serve":
        server.serve(settings, args)
        return 0
    from broker import logs

    logs.configure(settings.log_level, settings.log_format)  # stderr: stdout is the output
    if run is not None:
        from broker.cli._local import local

        async def locally() -> None:
            assert run is not None
            async with local(settings) as ops:
                await run(ops, args, out)

        return _run(out, locally)
    command: LocalCommand = args.local
    return _run(out, lambda: command(settings, args, out))


async def _remote(url: str, args: argparse.Namespace, out: Out, run: Command) -> None:
    from broker.cli._remote import remote, remote_from

    where = remote_from(
        url,
        key_file=args.key_file,
        jwt_file=args.jwt_file,
        cacert=args.cacert,
        timeout=args.timeout,
    )
    host = urlsplit(where.url).hostname or ""
    if urlsplit(where.url).scheme == "http" and host not in ("127.0.0.1", "localhost", "::1"):
        out.note(f"warning: {host} over plain http: the credential travels unencrypted")
    async with remote(where) as ops:
        await run(ops, args, out)


def _run(out: Out, work: Callable[[], Coroutine[Any, Any, None]]) -> int:
    try:
        asyncio.run(work())
    except ConfigError as exc:
        return _config_error(exc)
    except BrokerError as exc:
        out.error(exc.code, exc.detail)
        return EXIT_FAILED
    return 0


def _config_error(exc: ConfigError) -> int:
    if len(exc.problems) == 1:
        print(f"error: {exc.detail}", file=sys.stderr)
    else:
        print("configuration is invalid:", file=sys.stderr)
        for item in exc.problems:
            print(f"  - {item}", file=sys.stderr)
    return EXIT_USAGE
