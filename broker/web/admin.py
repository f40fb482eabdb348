"""The operator API under ``/v1/admin`` (role ``portals:admin``): list and show portals,
revoke, force a refresh, quarantine and release, a fresh install link for a portal or an
app. Views never carry a
token, a ciphertext or a secret."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.core.admin import portal_view
from broker.core.models import Caller, PortalKey, Role
from broker.errors import Forbidden, InvalidRequest
from broker.web.manage._common import authorize, reply, whole
from broker.web.params import json_body, parse_app, parse_int, reject_unknown
from broker.web.services import Services

# openapi.yaml says the reason matches \S, as JSON Schema (ECMAScript) reads it: one
# character outside ECMAScript's whitespace set.
_VISIBLE = re.compile("[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]")
_KEY_PARAMS = frozenset({"app", "user_id"})


async def _admin(request: Request) -> tuple[Services, Caller]:
    return await authorize(request, Role.PORTALS_ADMIN)


def _key(request: Request, svc: Services, caller: Caller) -> PortalKey:
    reject_unknown(request, _KEY_PARAMS)
    query = request.query_params
    key = PortalKey(
        parse_app(query.get("app"), svc.settings.default_app),
        parse_int(request.path_params["hub_id"], "hub_id") or 0,
        parse_int(query.get("user_id"), "user_id"),
    )
    if not caller.may_access(key.app, key.hub_id):
        raise Forbidden(f"caller {caller.name!r} may not manage portal {key}")
    return key


async def _portal(request: Request) -> tuple[Services, Caller, PortalKey]:
    """An admin request about one portal: the services, the caller and the portal, which the
    caller may manage."""
    svc, caller = await _admin(request)
    return svc, caller, _key(request, svc, caller)


async def _reason(request: Request, *, required: bool) -> str:
    body = await json_body(request)
    if body is None:
        if required:
            raise InvalidRequest(
                "a JSON body with a reason is required",
                errors=[{"field": "reason", "message": "required"}],
            )
        return ""
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str) or len(reason) > 500 or not _VISIBLE.search(reason):
        raise InvalidRequest(
            "reason must be a string of 1-500 characters",
            errors=[{"field": "reason", "message": "1-500 characters"}],
        )
    if set(body) - {"reason"}:
        raise InvalidRequest("unknown fields in the body")
    return reason.strip(" \t\r\n")


async def list_portals(request: Request) -> Response:
    svc, caller = await _admin(request)
    reject_unknown(request, frozenset({"app", "state", "limit"}))
    query = request.query_params
    app = parse_app(query["app"], "") if "app" in query else None
    limit = parse_int(query.get("limit"), "limit") or 100
    if limit > 1000:
        raise InvalidRequest("limit must be at most 1000")
    records = await svc.admin.list_portals(app=app, state=query.get("state"), limit=limit)
    visible = [r for r in records if caller.may_access(r.key.app, r.key.hub_id)]
    return reply({"portals": [portal_view(r) for r in visible]})


async def show_portal(request: Request) -> Response:
    svc, _, key = await _portal(request)
    return reply(portal_view(await svc.admin.show_portal(key)))


async def revoke(request: Request) -> Response:
    svc, caller, key = await _portal(request)
    reason = await _reason(request, required=True)
    done = await svc.operations.revoke(key, reason=reason, actor=caller.name)
    return reply({**portal_view(done.record), "upstream": done.upstream})


async def refresh(request: Request) -> Response:
    svc, caller, key = await _portal(request)
    return reply(portal_view(await svc.operations.force_refresh(key, actor=caller.name)))


async def quarantine(request: Request) -> Response:
    svc, caller, key = await _portal(request)
    reason = await _reason(request, required=True)
    return reply(
        portal_view(await svc.operations.quarantine(key, actor=caller.name, reason=reason))
    )


async def release(request: Request) -> Response:
    svc, caller, key = await _portal(request)
    return reply(portal_view(await svc.operations.release(key, actor=caller.name)))


async def install_link(request: Request) -> Response:
    svc, caller, key = await _portal(request)
    ttl, return_to = await _link_options(request)
    if return_to is not None:
        raise InvalidRequest(
            "a portal's install link returns to the install page, not return_to",
            errors=[{"field": "return_to", "message": "not for a portal's link"}],
        )
    link = await svc.operations.install_link(key, actor=caller.name, ttl=ttl)
    return reply(link.view())


async def app_install_link(request: Request) -> Response:
    """A link that installs any portal into the app: only for callers limited to no
    particular portals (a portal-scoped admin uses the portal's own install-link)."""
    svc, caller = await _admin(request)
    app = parse_app(request.path_params["app"], "")
    if not caller.may_manage_app(app):
        raise Forbidden(f"caller {caller.name!r} may not create install links for app {app!r}")
    reject_unknown(request, frozenset())
    ttl, return_to = await _link_options(request)
    link = await svc.install_links.mint(app, actor=caller.name, ttl=ttl, return_to=return_to)
    return reply(link.view())


async def _link_options(request: Request) -> tuple[int | None, str | None]:
    body = await json_body(request)
    if body is None:
        return None, None
    if not isinstance(body, dict) or set(body) - {"ttl", "return_to"}:
        raise InvalidRequest("the body must be an object with only ttl and return_to")
    ttl, return_to = whole(body.get("ttl")), body.get("return_to")
    if ttl is not None and type(ttl) is not int:
        raise InvalidRequest("ttl must be an integer", errors=[{"field": "ttl", "message": "int"}])
    if return_to is not None and not isinstance(return_to, str):
        raise InvalidRequest(
            "return_to must be a URL", errors=[{"field": "return_to", "message": "a URL"}]
        )
    return ttl, return_to


_PORTAL = "/v1/admin/portals/{hub_id}"
routes = [
    Route("/v1/admin/portals", list_portals, methods=["GET"]),
    Route(_PORTAL, show_portal, methods=["GET"]),
    Route(f"{_PORTAL}/revoke", revoke, methods=["POST"]),
    Route(f"{_PORTAL}/refresh", refresh, methods=["POST"]),
    Route(f"{_PORTAL}/quarantine", quarantine, methods=["POST"]),
    Route(f"{_PORTAL}/release", release, methods=["POST"]),
    Route(f"{_PORTAL}/install-link", install_link, methods=["POST"]),
    Route("/v1/admin/apps/{app}/install-links", app_install_link, methods=["POST"]),
]
