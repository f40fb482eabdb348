"""``GET /admin``: portals a page at a time, found by Hub ID or domain, filtered by state and
app, every choice a query parameter so a view can be bookmarked or shared."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from broker.core.models import PortalState
from broker.core.ports import PortalQuery
from broker.web.admin_page._query import PAGE_SIZES, Filters, flash, invalid, portal_key
from broker.web.admin_page._render import page, pages
from broker.web.admin_page._views import operator_or_login, portal_row, signed_in
from broker.web.params import reject_unknown
from broker.web.services import services

_PARAMS = frozenset({"q", "state", "app", "size", "after", "before", "done", "portal"})


@pages
async def portals_page(request: Request) -> Response:
    svc = services(request)
    reject_unknown(request, _PARAMS)
    query = request.query_params
    # Checked before the session, so a malformed link is a 422 whether logged in or not.
    filters = Filters.parse(query)
    after, before = (
        portal_key(query.get("after"), "after"),
        portal_key(query.get("before"), "before"),
    )
    if after is not None and before is not None:
        raise invalid("before", "must not come with after: a page follows one cursor")
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
            after=after,
            before=before,
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
    here = filters.url(
        after=None if after is None else str(after), before=None if before is None else str(before)
    )
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
        "first_url": filters.url() if (after or before) else None,
        "previous_url": None if found.previous is None else filters.url(before=str(found.previous)),
        "next_url": None if found.next is None else filters.url(after=str(found.next)),
        "back": here,
    }
    return page(request, "portals.html", context)
