"""``broker audit`` and ``broker webhooks``."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from broker.cli._ops import Operations
from broker.cli._output import Out, table
from broker.errors import ConfigError


def _iso(raw: str | None, option: str) -> str | None:
    if raw is None:
        return None
    # In UTC, as the API's parse_time: a time that leaves the calendar there (year 1 at
    # +01:00) is a usage error here, not an overflow in the database driver (local mode).
    try:
        value = datetime.fromisoformat(raw)
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    except (ValueError, OverflowError) as exc:
        raise ConfigError([f"{option}: an ISO 8601 time, e.g. 2026-11-29T08:00:00+00:00"]) from exc


async def audit(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    query: dict[str, Any] = {
        "hub_id": args.hub,
        "actor": args.caller,
        "action": args.action,
        "app": args.app,
        "since": _iso(args.since, "--since"),
        "until": _iso(args.until, "--until"),
        "limit": args.limit,
        "cursor": args.cursor,
    }
    page = await ops.audit({k: v for k, v in query.items() if v is not None})
    events = page["events"]
    rows = [{**e, "detail": json.dumps(e["detail"], sort_keys=True)} for e in events]
    out.emit(events, table(rows, ["at", "actor", "action", "app", "hub_id", "detail"]))
    if page["next_cursor"]:
        out.next_page("--cursor", page["next_cursor"])


async def webhook_events(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    query: dict[str, Any] = {
        "type": args.type,
        "app": args.app,
        "hub_id": args.hub,
        "undelivered": "true" if args.undelivered else None,
        "limit": args.limit,
        "before": args.before,
    }
    page = await ops.webhook_events({k: v for k, v in query.items() if v is not None})
    rows = [
        {
            **{k: e[k] for k in ("id", "type", "app", "hub_id", "at")},
            "deliveries": " ".join(
                f"{d['host'] or d['endpoint']}:{d['state']}/{d['attempts']}"
                for d in e["deliveries"]
            )
            or "(not fanned out)",
        }
        for e in page["events"]
    ]
    out.emit(page["events"], table(rows, ["id", "type", "app", "hub_id", "at", "deliveries"]))
    if page["next_before"]:
        out.next_page("--before", page["next_before"])


async def redeliver(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    event = await ops.redeliver(args.id, args.endpoint)
    endpoints = ", ".join(d["host"] or d["endpoint"] for d in event["deliveries"]) or "-"
    out.emit(event, f"event {event['id']} ({event['webhook_id']}) due again for: {endpoints}")


def register(sub: Any) -> None:
    trail = sub.add_parser("audit", help="query the audit trail (newest first)")
    trail.add_argument("--hub", type=int)
    trail.add_argument("--caller", help="the actor: a caller name, cli:LOGIN, browser, ...")
    trail.add_argument("--action", help="e.g. token.issued, portal.revoked")
    trail.add_argument("--app")
    trail.add_argument("--since", help="ISO 8601 time (inclusive)")
    trail.add_argument("--until", help="ISO 8601 time (exclusive)")
    trail.add_argument("--limit", type=int, default=100)
    trail.add_argument("--cursor", help="the next page, as printed after a full page")
    trail.set_defaults(run=audit)

    hooks = sub.add_parser("webhooks", help="webhook events and deliveries").add_subparsers(
        dest="sub", required=True
    )
    recent = hooks.add_parser("events", help="recent events, each receiver's delivery state")
    recent.add_argument("--type")
    recent.add_argument("--app")
    recent.add_argument("--hub", type=int)
    recent.add_argument("--undelivered", action="store_true")
    recent.add_argument("--limit", type=int, default=50)
    recent.add_argument("--before", type=int, help="events older than this id")
    recent.set_defaults(run=webhook_events)
    again = hooks.add_parser(
        "redeliver", help="send an event again (same Webhook-Id) to every receiver, or one"
    )
    again.add_argument("id", type=int)
    again.add_argument("--endpoint", help="one receiver's endpoint key")
    again.set_defaults(run=redeliver)
