"""``/v1/admin/callers`` (role ``callers:admin``): create (the key in the answer, once),
rotate with an overlap (the new key, once), disable, list (never a key).

No escalation: a callers:admin creates, rotates, disables and lists only callers it covers
(:meth:`Caller.covers`: roles, apps, hubs and expiry within its own). Rotating hands out a
key, so managing a wider caller would be taking it over."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.core.admin import caller_view
from broker.core.models import Role
from broker.errors import InvalidRequest
from broker.web.manage._common import Body, authorize, reply
from broker.web.params import reject_unknown

_CREATE = frozenset(
    {"name", "roles", "apps", "hub_ids", "expires_at", "rate_limit", "jwt_issuer", "jwt_subject"}
    | {"with_key"}
)
_DAY = 86400
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not _NAME.match(name):
        raise InvalidRequest(
            "name must be a caller name: 1-128 letters, digits, '.', '_', ':' or '-'",
            errors=[{"field": "name", "message": "not a caller name"}],
        )
    return name


async def list_callers(request: Request) -> Response:
    svc, caller = await authorize(request, Role.CALLERS_ADMIN)
    reject_unknown(request, frozenset())
    found = await svc.callers.list()
    return reply({"callers": [caller_view(c) for c in found if caller.covers(c)]})


async def create(request: Request) -> Response:
    svc, caller = await authorize(request, Role.CALLERS_ADMIN)
    reject_unknown(request, frozenset())
    body = await Body.read(request, _CREATE)
    issuer, subject = body.text("jwt_issuer"), body.text("jwt_subject")
    if (issuer is None) != (subject is None):
        raise InvalidRequest(
            "jwt_issuer and jwt_subject go together",
            errors=[{"field": "jwt_subject", "message": "needs jwt_issuer (and back)"}],
        )
    with_key = body.flag("with_key")
    new = await svc.callers.create(
        body.text("name", required=True, limit=128) or "",
        roles=body.texts("roles") or [Role.TOKENS_READ.value],
        apps=body.texts("apps"),
        hub_ids=body.integers("hub_ids"),
        expires_at=body.time("expires_at"),
        rate_limit=body.number("rate_limit", minimum=0.001, maximum=1e6),
        identity=None if issuer is None or subject is None else (issuer, subject),
        with_key=True if with_key is None else with_key,
        actor=caller.name,
        granter=caller,
    )
    return reply({**caller_view(new.caller), "key": new.secret or None}, 201)


async def rotate(request: Request) -> Response:
    svc, caller = await authorize(request, Role.CALLERS_ADMIN)
    reject_unknown(request, frozenset())
    body = await Body.read(request, frozenset({"overlap_seconds"}))
    overlap = body.number("overlap_seconds", minimum=0, maximum=30 * _DAY)
    new = await svc.callers.rotate(
        _name(request),
        overlap_seconds=_DAY if overlap is None else overlap,
        actor=caller.name,
        granter=caller,
    )
    return reply({**caller_view(new.caller), "key": new.secret})


async def disable(request: Request) -> Response:
    svc, caller = await authorize(request, Role.CALLERS_ADMIN)
    reject_unknown(request, frozenset())
    name = _name(request)
    await svc.callers.disable(name, actor=caller.name, granter=caller)
    return reply(caller_view(await svc.callers.get(name)))


async def set_gateway(request: Request) -> Response:
    svc, caller = await authorize(request, Role.CALLERS_ADMIN)
    reject_unknown(request, frozenset())
    body = await Body.read(request, frozenset({"hubspot_paths", "gateway_weight"}))
    weight = body.integer("gateway_weight", minimum=1, maximum=100)
    changed = await svc.callers.set_gateway(
        _name(request),
        hubspot_paths=body.texts("hubspot_paths") or [],
        gateway_weight=1 if weight is None else weight,
        actor=caller.name,
        granter=caller,
    )
    return reply(caller_view(changed))


routes = [
    Route("/v1/admin/callers", list_callers, methods=["GET"]),
    Route("/v1/admin/callers", create, methods=["POST"]),
    Route("/v1/admin/callers/{name}/rotate", rotate, methods=["POST"]),
    Route("/v1/admin/callers/{name}/disable", disable, methods=["POST"]),
    Route("/v1/admin/callers/{name}/gateway", set_gateway, methods=["POST"]),
]
