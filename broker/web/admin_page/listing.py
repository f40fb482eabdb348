"""``GET /admin``: portals a page at a time, found by Hub ID or domain, filtered by state and
app, every choice a query parameter so a view can be bookmarked or shared."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from broker.core.models import PortalState
from broker.core.ports import PortalQuery
from broker.web.admin_page._query import PAGE_SIZES, Filters, PageCursor, flash, page_cursor
from broker.web.admin_page._render import page, pages
from broker.web.admin_page._views import operator_or_login, portal_row, signed_in
from broker.web.params import reject_unknown
from broker.web.services import services

_PARAMS = frozenset({"q", "state", "app", "size", "page", "done", "portal"})


@pages
async def portals_page(request: Request) -> Response:
    svc = services(request)
    reject_unknown(request, _PARAMS)
    query = request.query_params
    # Checked before the session, so a malformed link is a 422 whether logged in or not.
    filters = Filters.parse(query)
    cursor = page_cursor(query.get("page"))
    message = flash(query)
    operator = await operator_or_login(request, svc)
    if isinstance(operator, Response):
        return operator
    caller = operator.caller
    found = await svc.browser.search(
        caller,
        PortalQuery(
            text=filters.text,
            state=filters.state,
            app=filters.app,
            after=None if cursor is None or cursor.before else cursor.key,
            before=cursor.key if cursor is not None and cursor.before else None,
            limit=filters.size,
        ),
    )
    apps = [
        a.slug for a in await svc.admin.list_apps() if caller.apps is None or a.slug in caller.apps
    ]
    total = sum(found.by_state.values())
    tabs = [("All", filters.url(state=None), filters.state is None, total)] + [
        (
            s.value.replace("_", " "),
            filters.url(state=s.value),
            filters.state is s,
            found.by_state.get(s, 0),
        )
        for s in PortalState
    ]
    here = filters.url(page=None if cursor is None else str(cursor))
    context = {
        **signed_in(operator),
        "flash": message,
        "filters": filters,
        "states": [s.value for s in PortalState],
        "apps": apps,
        "sizes": PAGE_SIZES,
        "tabs": tabs,
        "matching": found.by_state.get(filters.state, 0) if filters.state else total,
        "rows": [portal_row(r) for r in found.portals],
        "first_url": None if cursor is None else filters.url(),
        "previous_url": None
        if found.previous is None
        else filters.url(page=str(PageCursor(True, found.previous))),
        "next_url": None
        if found.next is None
        else filters.url(page=str(PageCursor(False, found.next))),
        "back": here,
    }
    return page(request, "portals.html", context)
