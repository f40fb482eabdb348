"""``broker callers``: service identities. Keys are printed once, at creation or rotation."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.cli._ops import Operations, View
from broker.cli._output import Out
from broker.core.models import Role


def _row(caller: View) -> dict[str, Any]:
    def joined(values: list[Any] | None) -> str:
        return "*" if values is None else ",".join(map(str, values))

    return {
        "name": caller["name"],
        "roles": ",".join(caller["roles"]),
        "apps": joined(caller["apps"]),
        "hubs": joined(caller["hub_ids"]),
        "expires_at": caller["expires_at"],
        "disabled": caller["disabled"],
    }


async def create(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    expires = None
    if args.expires_days is not None:
        expires = (datetime.now(UTC) + timedelta(days=args.expires_days)).isoformat()
    spec: dict[str, Any] = {
        "name": args.name,
        "roles": args.role or [Role.TOKENS_READ.value],
        "apps": args.app,
        "hub_ids": args.hub,
        "expires_at": expires,
        "rate_limit": args.rate,
        "with_key": not args.no_key,
    }
    if args.jwt_subject:
        spec.update(jwt_issuer=args.jwt_issuer, jwt_subject=args.jwt_subject)
    new = await ops.callers_create({k: v for k, v in spec.items() if v is not None})
    data = {"name": new["name"], "key": new["key"], "expires_at": new["expires_at"]}
    text = f"caller {new['name']} created"
    text += f". Its key (shown once):\n{new['key']}" if new["key"] else " (workload identity only)"
    out.emit(data, text)


async def list_callers(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    rows = [_row(c) for c in await ops.callers_list()]
    out.rows(rows, ["name", "roles", "apps", "hubs", "expires_at", "disabled"])


async def rotate(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    new = await ops.caller_rotate(args.name, overlap_seconds=args.overlap_hours * 3600)
    data = {"name": new["name"], "key": new["key"], "old_key_valid_hours": args.overlap_hours}
    out.emit(
        data,
        f"caller {new['name']}: new key (shown once), the old one works for "
        f"{args.overlap_hours:g} more hours:\n{new['key']}",
    )


async def disable(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    done = await ops.caller_disable(args.name)
    out.emit({"name": done["name"], "disabled": True}, f"caller {done['name']} disabled")


async def gateway(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    done = await ops.caller_gateway(args.name, hubspot_paths=args.path or [], weight=args.weight)
    paths = ", ".join(done["hubspot_paths"]) or "none"
    out.emit(
        {k: done[k] for k in ("name", "hubspot_paths", "gateway_weight")},
        f"caller {done['name']}: HubSpot paths {paths}, gateway weight {done['gateway_weight']}",
    )


def register(sub: Any) -> None:
    callers = sub.add_parser("callers", help="service identities").add_subparsers(
        dest="sub", required=True
    )
    new = callers.add_parser("create", help="create a caller and print its key once")
    new.add_argument("name")
    new.add_argument("--app", action="append", help="allowed app (repeatable; default all)")
    new.add_argument("--hub", action="append", type=int, help="allowed hub_id (default all)")
    new.add_argument("--role", action="append", choices=[r.value for r in Role])
    new.add_argument("--expires-days", type=float)
    new.add_argument("--rate", type=float, help="requests/s per replica (default: broker's)")
    new.add_argument("--jwt-issuer", help="workload identity: the JWT issuer (iss)")
    new.add_argument(
        "--jwt-subject",
        help="workload identity: the subject (sub), e.g. system:serviceaccount:NAMESPACE:NAME",
    )
    new.add_argument("--no-key", action="store_true", help="identity only: issue no key")
    new.set_defaults(run=create)
    callers.add_parser("list", help="list callers (never a key)").set_defaults(run=list_callers)
    turn = callers.add_parser("rotate", help="issue a new key; the old one works a while")
    turn.add_argument("name")
    turn.add_argument("--overlap-hours", type=float, default=24.0)
    turn.set_defaults(run=rotate)
    off = callers.add_parser("disable", help="disable a caller")
    off.add_argument("name")
    off.set_defaults(run=disable)
    gate = callers.add_parser(
        "gateway", help="set the HubSpot paths a caller may call through the gateway"
    )
    gate.add_argument("name")
    gate.add_argument(
        "--path",
        action="append",
        help="HubSpot path prefix, e.g. /crm/v3/ ('/': all)",
    )
    gate.add_argument("--weight", type=int, default=1, help="turns per round in a portal's queue")
    gate.set_defaults(run=gateway)
