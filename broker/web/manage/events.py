"""The audit trail and the webhook outbox for operators (role ``portals:admin``):

* ``GET /v1/admin/audit``: filters and an opaque cursor (:mod:`broker.core.audit`);
* ``GET /v1/admin/webhooks/events``: recent events and each endpoint's delivery state;
* ``POST /v1/admin/webhooks/events/{id}/redeliver`` (:mod:`broker.core.webhook_events`).

A caller limited to some apps or hubs sees (and redelivers) only events naming them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.core.audit import MAX_PAGE, event_view
from broker.core.models import Role
from broker.core.ports import AuditFilter, EventFilter
from broker.core.webhook_events import MAX_PAGE as MAX_EVENTS
from broker.web.manage._common import (
    Body,
    authorize,
    query_flag,
    query_limit,
    query_text,
    query_time,
    reply,
)
from broker.web.params import parse_app, parse_int, reject_unknown

_AUDIT = frozenset({"hub_id", "actor", "action", "app", "since", "until", "limit", "cursor"})
_EVENTS = frozenset({"type", "app", "hub_id", "undelivered", "limit", "before"})


def _app(request: Request) -> str | None:
    raw = request.query_params.get("app")
    return None if raw is None else parse_app(raw, "")


async def audit(request: Request) -> Response:
    svc, caller = await authorize(request, Role.PORTALS_ADMIN)
    reject_unknown(request, _AUDIT)
    match = AuditFilter(
        hub_id=parse_int(request.query_params.get("hub_id"), "hub_id"),
        actor=query_text(request, "actor"),
        action=query_text(request, "action"),
        app=_app(request),
        since=query_time(request, "since"),
        until=query_time(request, "until"),
    )
    page = await svc.audit_trail.search(
        match,
        caller=caller,
        cursor=query_text(request, "cursor"),
        limit=query_limit(request, default=100, maximum=MAX_PAGE),
    )
    return reply({"events": [event_view(e) for e in page.events], "next_cursor": page.next_cursor})


async def list_events(request: Request) -> Response:
    svc, caller = await authorize(request, Role.PORTALS_ADMIN)
    reject_unknown(request, _EVENTS)
    match = EventFilter(
        type=query_text(request, "type"),
        app=_app(request),
        hub_id=parse_int(request.query_params.get("hub_id"), "hub_id"),
        undelivered=query_flag(request, "undelivered"),
    )
    page = await svc.webhook_events.recent(
        match,
        caller=caller,
        before=parse_int(request.query_params.get("before"), "before"),
        limit=query_limit(request, default=50, maximum=MAX_EVENTS),
    )
    views = [svc.webhook_events.view(e) for e in page.events]
    return reply({"events": views, "next_before": page.next_before})


async def redeliver(request: Request) -> Response:
    svc, caller = await authorize(request, Role.PORTALS_ADMIN)
    reject_unknown(request, frozenset())
    event_id = parse_int(request.path_params["id"], "id") or 0
    body = await Body.read(request, frozenset({"endpoint"}))
    event = await svc.webhook_events.redeliver(
        event_id, actor=caller.name, caller=caller, endpoint=body.text("endpoint", limit=16)
    )
    return reply(svc.webhook_events.view(event))


routes = [
    Route("/v1/admin/audit", audit, methods=["GET"]),
    Route("/v1/admin/webhooks/events", list_events, methods=["GET"]),
    Route("/v1/admin/webhooks/events/{id}/redeliver", redeliver, methods=["POST"]),
]
