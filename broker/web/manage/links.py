"""``/v1/admin/install-links`` (role ``portals:admin``): list minted links (never a link
token: it is not stored) and revoke one.

A caller limited to some apps sees and revokes only their links; one limited to some hubs
only the links minted for one of its portals (an app-wide link installs any portal: it is
for callers limited to no portals, like minting one)."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.core.admin import link_view
from broker.core.models import Caller, InstallLinkRecord, Role
from broker.errors import Forbidden, InvalidRequest
from broker.web.manage._common import authorize, query_flag, reply
from broker.web.params import parse_app, reject_unknown

_LINK_ID = re.compile(r"il_[A-Za-z0-9_-]{1,60}\Z")


def _visible(caller: Caller, link: InstallLinkRecord) -> bool:
    if link.hub_id is None:
        return caller.may_manage_app(link.app)
    return caller.may_access(link.app, link.hub_id)


async def list_links(request: Request) -> Response:
    svc, caller = await authorize(request, Role.PORTALS_ADMIN)
    reject_unknown(request, frozenset({"app", "all"}))
    query = request.query_params
    app = parse_app(query["app"], "") if "app" in query else None
    links = await svc.install_links.list_links(app=app, include_inactive=query_flag(request, "all"))
    return reply({"links": [link_view(x) for x in links if _visible(caller, x)]})


async def revoke(request: Request) -> Response:
    svc, caller = await authorize(request, Role.PORTALS_ADMIN)
    reject_unknown(request, frozenset())
    link_id: str = request.path_params["id"]
    if not _LINK_ID.match(link_id):
        raise InvalidRequest(
            "id must be an install link id (il_...)",
            errors=[{"field": "id", "message": "not an install link id"}],
        )
    link = await svc.install_links.get(link_id)
    if not _visible(caller, link):
        raise Forbidden(f"caller {caller.name!r} may not revoke this install link")
    return reply(link_view(await svc.install_links.revoke(link_id, actor=caller.name)))


routes = [
    Route("/v1/admin/install-links", list_links, methods=["GET"]),
    Route("/v1/admin/install-links/{id}/revoke", revoke, methods=["POST"]),
]
