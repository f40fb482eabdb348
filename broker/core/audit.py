"""Searching the audit trail (``broker audit``, ``GET /v1/admin/audit``, the operator page's
timelines): filters, a scope, and cursor pagination.

Pages are newest first by the keyset (``at``, ``id``). A cursor is opaque to clients
(base64url of the last event's position): the next page holds the events strictly older
than it, so events written while a client pages never shift, repeat or hide the ones it has
not read yet. A cursor carries no filter and no scope: both are applied to every page from
the request itself, so a crafted cursor only moves the starting point.

Scope: a caller limited to some apps (or hub ids) sees only events naming one of them, and
never an event naming no app (or no hub): a caller created, a signing key rotated. Such
events are for callers limited to nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from broker.core.models import Caller
from broker.core.ports import AuditEvent, AuditFilter, AuditPosition, AuditSink
from broker.errors import InvalidRequest

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[AuditEvent]
    #: Pass it back for the next (older) page; None when this page was the last.
    next_cursor: str | None


def check_limit(limit: int, maximum: int) -> None:
    """A page size: 1 to ``maximum``."""
    if not 1 <= limit <= maximum:
        raise InvalidRequest(
            f"limit must be 1-{maximum}", errors=[{"field": "limit", "message": f"1-{maximum}"}]
        )


def encode_cursor(position: AuditPosition) -> str:
    raw = json.dumps({"at": position.at.isoformat(), "id": position.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> AuditPosition:
    """The position a cursor names; a 422 for anything this module did not make."""
    invalid = InvalidRequest(
        "cursor is not one this API returned",
        errors=[{"field": "cursor", "message": "not a cursor from a previous page"}],
    )
    if len(cursor) > 200:
        raise invalid
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(data["at"])
        event_id = data["id"]
        if at.tzinfo is None:
            raise invalid
        at = at.astimezone(UTC)  # out of the calendar once in UTC: OverflowError
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise invalid from exc
    if type(event_id) is not int or not 0 < event_id < 2**63:
        raise invalid
    return AuditPosition(at, event_id)


def scoped(match: AuditFilter, caller: Caller | None) -> AuditFilter:
    """``match`` limited to what ``caller`` may see (None: everything, the local CLI)."""
    if caller is None:
        return match
    return replace(match, apps=caller.apps, hub_ids=caller.hub_ids)


def event_view(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "app": event.app,
        "hub_id": event.hub_id,
        "user_id": event.user_id,
        "detail": event.detail,
    }


class AuditTrail:
    def __init__(self, audit: AuditSink) -> None:
        self._audit = audit

    async def search(
        self,
        match: AuditFilter,
        *,
        caller: Caller | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """One page of events matching ``match`` that ``caller`` may see."""
        check_limit(limit, MAX_PAGE)
        after = None if cursor is None else decode_cursor(cursor)
        found = await self._audit.search(scoped(match, caller), after=after, limit=limit + 1)
        events = found[:limit]
        more = len(found) > limit
        last = events[-1] if more else None
        return AuditPage(events, None if last is None else encode_cursor(_position(last)))


def _position(event: AuditEvent) -> AuditPosition:
    return AuditPosition(event.at, event.id)
