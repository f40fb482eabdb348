"""Webhook events for operators (``broker webhooks``, ``/v1/admin/webhooks/events``): the
recent outbox events with each receiver endpoint's delivery state, and redelivery.

Delivery state per endpoint: ``delivered`` (acknowledged), ``pending`` (not attempted yet),
``failing`` (the last attempt failed: 5xx, 408, 429, timeout, connection; retried with
backoff) or ``rejected`` (the receiver answered another 3xx/4xx: it is misconfigured; still
retried with backoff, see :mod:`broker.core.webhooks`). Endpoints are named by their key (a
hash of the URL: URLs may carry credentials) and, while configured, their host.

Redelivery makes an event due again at once for every configured endpoint (or one): the
delivered ones are sent again, the failing or rejected ones no longer wait for their
backoff, and an endpoint added since the event was fanned out gets it for the first time.
The redelivered event keeps its ``Webhook-Id`` (``evt_<id>``) and its body; only the
timestamp and signature are new. It is the same event, and receivers deduplicate by
``Webhook-Id``: one that already stored it acknowledges it without acting twice, which is
what an at-least-once receiver must do anyway, while one that lost it (a restore, a bug
fixed since) processes it. A new id would make every receiver act on it a second time.
Audited as ``webhook.redelivered``.

Scope as for the audit trail (:mod:`broker.core.audit`): a caller limited to some apps or
hubs lists and redelivers only events naming them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from broker.core.audit import check_limit
from broker.core.models import Caller, PortalKey
from broker.core.ports import AuditSink, DeliveryRecord, EventFilter, EventLog, EventRecord
from broker.core.webhooks import classify, endpoint_key
from broker.errors import Conflict, Forbidden, InvalidRequest, NotFound
from broker.metrics import Delivery

MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[EventRecord]
    #: The id to pass as ``before`` for the next (older) page; None after the last.
    next_before: int | None


def delivery_state(delivery: DeliveryRecord) -> str:
    if delivery.delivered_at is not None:
        return "delivered"
    error = delivery.last_error
    if error is None:
        return "pending"
    status = error.removeprefix("http_")
    if status.isdigit() and classify(int(status)) is Delivery.REJECTED:
        return "rejected"
    return "failing"


class WebhookEvents:
    def __init__(self, *, log: EventLog, urls: Sequence[str], audit: AuditSink) -> None:
        self._log = log
        self._hosts = {endpoint_key(url): urlsplit(url).hostname for url in dict.fromkeys(urls)}
        self._audit = audit

    def view(self, event: EventRecord) -> dict[str, Any]:
        def iso(value: Any) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "id": event.id,
            "webhook_id": f"evt_{event.id}",
            "type": event.type,
            "app": event.app,
            "hub_id": event.hub_id,
            "user_id": event.user_id,
            "at": iso(event.at),
            "fanned_out_at": iso(event.fanned_out_at),
            "delivered_at": iso(event.delivered_at),
            "deliveries": [
                {
                    "endpoint": d.endpoint,
                    "host": self._hosts.get(d.endpoint),
                    "state": delivery_state(d),
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "last_attempt_at": iso(d.last_attempt_at),
                    "next_attempt_at": None if d.delivered_at else iso(d.next_attempt_at),
                    "delivered_at": iso(d.delivered_at),
                }
                for d in event.deliveries
            ],
        }

    async def recent(
        self,
        match: EventFilter,
        *,
        caller: Caller | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> EventPage:
        check_limit(limit, MAX_PAGE)
        if caller is not None:
            match = replace(match, apps=caller.apps, hub_ids=caller.hub_ids)
        found = await self._log.recent(match, before_id=before, limit=limit + 1)
        events = found[:limit]
        return EventPage(events, events[-1].id if len(found) > limit else None)

    async def redeliver(
        self,
        event_id: int,
        *,
        actor: str,
        caller: Caller | None = None,
        endpoint: str | None = None,
    ) -> EventRecord:
        if not self._hosts:
            raise Conflict(
                "webhooks are off (BROKER_WEBHOOK_URLS is empty): nothing to deliver to",
                code="webhooks_disabled",
            )
        if endpoint is not None and endpoint not in self._hosts:
            raise InvalidRequest(
                "endpoint is not the key of a configured receiver",
                errors=[{"field": "endpoint", "message": "not a configured endpoint key"}],
            )
        event = await self._log.get(event_id)
        if event is None:
            raise NotFound(f"no event {event_id}", code="event_not_found")
        if caller is not None and not visible(caller, event):
            raise Forbidden(f"caller {caller.name!r} may not redeliver event {event_id}")
        endpoints = [endpoint] if endpoint is not None else sorted(self._hosts)
        done = await self._log.redeliver(event_id, endpoints)
        if done is None:  # deleted by the retention sweep in between
            raise NotFound(f"no event {event_id}", code="event_not_found")
        portal = None
        if event.app is not None and event.hub_id is not None:
            portal = PortalKey(event.app, event.hub_id, event.user_id)
        self._audit.record(
            "webhook.redelivered",
            actor=actor,
            key=portal,
            app=event.app,
            event_id=event_id,
            type=event.type,
            endpoints=endpoints,
        )
        return done


def visible(caller: Caller, event: EventRecord) -> bool:
    if caller.apps is not None and event.app not in caller.apps:
        return False
    return caller.hub_ids is None or event.hub_id in caller.hub_ids
