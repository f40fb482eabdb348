"""``broker portals`` and ``broker install-links``."""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli._ops import Operations
from broker.cli._output import Out
from broker.cli.apps import emit_link, link_options

_DONE = {
    "revoke": "revoked (upstream: {upstream})",
    "quarantine": "quarantined",
    "release": "released",
    "refresh": "refreshed (version {version})",
}


async def list_portals(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    rows = await ops.portals_list(app=args.app, state=args.state, limit=args.limit)
    out.rows(rows, ["app", "hub_id", "user_id", "hub_domain", "state", "access_expires_at"])


async def show(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    view = await ops.portal("show", args.app, args.hub_id, args.user_id, None)
    out.emit(view, "\n".join(f"{k:18} {'-' if v is None else v}" for k, v in view.items()))


async def act(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    body: dict[str, Any] | None = None
    if args.sub in ("revoke", "quarantine"):
        body = {"reason": args.reason}
    elif args.sub == "install-link" and args.ttl is not None:
        body = {"ttl": args.ttl}
    view = await ops.portal(args.sub, args.app, args.hub_id, args.user_id, body)
    if args.sub == "install-link":
        emit_link(out, view)
        return
    user = "" if view["user_id"] is None else f"/user/{view['user_id']}"
    key = f"{view['app']}/{view['hub_id']}{user}"
    out.emit(view, f"portal {key} " + _DONE[args.sub].format(**view))


async def links(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    if args.sub == "revoke":
        rows = [await ops.link_revoke(args.id)]
    else:
        rows = await ops.links_list(app=args.app, include_inactive=args.all)
    out.rows(rows, ["id", "app", "hub_id", "created_by", "expires_at", "revoked_at"])


def register(sub: Any) -> None:
    portals = sub.add_parser("portals", help="installed portals").add_subparsers(
        dest="sub", required=True
    )
    found = portals.add_parser("list", help="list portals")
    found.add_argument("--app")
    found.add_argument("--state")
    found.add_argument("--limit", type=int, default=100)
    found.set_defaults(run=list_portals)
    one = portals.add_parser("show", help="show one portal (never its tokens)")
    one.add_argument("hub_id", type=int)
    one.add_argument("--app")
    one.add_argument("--user-id", type=int)
    one.set_defaults(run=show)
    for name, text in (
        ("revoke", "revoke at HubSpot and locally; every replica stops serving it"),
        ("quarantine", "hold a portal: no token served until released"),
        ("release", "release a quarantined portal"),
        ("refresh", "refresh its token now"),
        ("install-link", "a fresh install link for the portal's admin"),
    ):
        action = portals.add_parser(name, help=text)
        action.add_argument("hub_id", type=int)
        action.add_argument("--app")
        action.add_argument("--user-id", type=int)
        if name in ("revoke", "quarantine"):
            action.add_argument("--reason", required=True)
        if name == "install-link":
            link_options(action)
        action.set_defaults(run=act)

    minted = sub.add_parser("install-links", help="minted install links").add_subparsers(
        dest="sub", required=True
    )
    listed = minted.add_parser("list", help="unexpired, unrevoked links (never the token)")
    listed.add_argument("--app")
    listed.add_argument("--all", action="store_true", help="expired and revoked ones too")
    listed.set_defaults(run=links)
    revoke = minted.add_parser("revoke", help="refuse this link from now on, on every replica")
    revoke.add_argument("id")
    revoke.set_defaults(run=links)
