"""``GET /admin/portals/{hub_id}?app=...``: one portal's details (the operator API's view:
never a token, a ciphertext or a secret), its actions, and its timeline from the audit
trail, newest first, a page at a time.

The timeline is what the audit trail holds for the portal: installs, refreshes
(``portal.refreshed``, one per stored token), needs-reauth and heals, revokes, quarantines,
releases, forced refreshes and install links, plus, on request, the token-issue tallies.
Refresh *failures* are not audited per attempt (the hot path counts them in metrics and on
the portal row): the timeline adds the outbox's failure transitions (``refresh_failing``,
``flagged``, ``recovered``: one per change of state, not per attempt), and the details
show the row's failure count, last error and next attempt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from broker.core.ports import TimelineEntry
from broker.web.admin_page._query import (
    DEFAULT_SIZE,
    cursor_text,
    flash,
    invalid,
    page_size,
    path_key,
    timeline_cursor,
)
from broker.web.admin_page._render import page, pages
from broker.web.admin_page._views import operator_or_login, portal_row, portal_url, signed_in
from broker.web.params import reject_unknown
from broker.web.services import services

_PARAMS = frozenset({"app", "user_id", "before", "issues", "size", "done", "portal"})


@dataclass(frozen=True, slots=True)
class Event:
    at: object
    action: str
    actor: str
    #: The event's detail as (name, text) pairs, values as JSON unless plain strings.
    detail: list[tuple[str, str]]


def _event(entry: TimelineEntry) -> Event:
    detail = [
        (name, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        for name, value in sorted(entry.detail.items())
    ]
    return Event(entry.at, entry.action, entry.actor, detail)


@pages
async def portal_page(request: Request) -> Response:
    svc = services(request)
    reject_unknown(request, _PARAMS)
    query = request.query_params
    key = path_key(request, svc.settings.default_app, query.get("app"), query.get("user_id"))
    before = timeline_cursor(query.get("before"))
    size = page_size(query)
    issues = query.get("issues")
    if issues not in (None, "1"):
        raise invalid("issues", "must be 1 (show token issues) or absent")
    message = flash(query)
    operator = await operator_or_login(request, svc)
    if isinstance(operator, Response):
        return operator
    record = await svc.browser.portal(operator.caller, key)
    found = await svc.browser.timeline(
        operator.caller, key, before=before, limit=size, issues=issues is not None
    )
    here = portal_url(key)
    kept: dict[str, str | None] = {
        "issues": issues,
        "size": None if size == DEFAULT_SIZE else str(size),
    }

    def link(**changes: str | None) -> str:
        params = {k: v for k, v in (kept | changes).items() if v is not None}
        return f"{here}&{urlencode(params)}" if params else here

    context = {
        **signed_in(operator),
        "flash": message,
        "row": portal_row(record),
        "events": [_event(e) for e in found.entries],
        "issues": issues is not None,
        "newest_url": link() if before else None,
        "older_url": None if found.older is None else link(before=cursor_text(found.older)),
        "toggle_url": link(issues=None if issues else "1"),
        "back": link(before=None if before is None else cursor_text(before)),
    }
    return page(request, "portal.html", context)
