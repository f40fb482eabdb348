"""``broker apps add-private / rotate-private / remove-private``: a private app's static
token, read from stdin or a file (never an argument: ``ps``, shell history), stored in
Vault; never printed (the output is the portal's view)."""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli._ops import Operations
from broker.cli._output import Out


def _token(args: argparse.Namespace) -> str:
    from broker.cli.apps import read_hidden

    return read_hidden(args.token_file, "private app access token: ")


async def add(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    body = {"access_token": _token(args), "scopes": args.scope}
    portal = await ops.private_app("add", args.slug, args.hub, body)
    out.emit(portal, f"private app {args.slug} of hub {args.hub}: token stored in Vault, served")


async def rotate(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    body: dict[str, Any] = {"access_token": _token(args)}
    if args.old_expires_in is not None:
        body["old_expires_in"] = args.old_expires_in
    portal = await ops.private_app("rotate", args.slug, args.hub, body)
    old = portal.get("previous_expires_at") or "not given"
    out.emit(portal, f"private app {args.slug} of hub {args.hub}: new token served (old: {old})")


async def remove(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    portal = await ops.private_app("remove", args.slug, args.hub, {})
    out.emit(portal, f"private app {args.slug} of hub {args.hub}: removed, token destroyed")
    out.note("HubSpot cannot revoke it from here: rotate it in HubSpot's UI to kill it there")


def register(apps: Any) -> None:
    """The three commands, under ``broker apps``."""
    for name, run, text in (
        ("add-private", add, "store a private app's token (from stdin) and serve it"),
        ("rotate-private", rotate, "serve a new private-app token (from stdin) from now on"),
        ("remove-private", remove, "stop serving a private-app token and destroy it in Vault"),
    ):
        parser = apps.add_parser(name, help=text)
        parser.add_argument("slug")
        parser.add_argument("--hub", type=int, required=True, help="the app's HubSpot account")
        if run is not remove:
            parser.add_argument("--token-file", help="read the token from this file, not stdin")
        if run is add:
            parser.add_argument("--scope", action="append", default=[], help="repeatable")
        if run is rotate:
            parser.add_argument(
                "--old-expires-in",
                type=int,
                help="seconds HubSpot keeps the previous token valid (as set in its UI)",
            )
        parser.set_defaults(run=run)
