"""``ANY /v1/portals/{hub_id}/hubspot/{path}``: the HubSpot gateway, and
``GET``/``POST /v1/portals/{hub_id}/budget``: the portal's budget for token-route callers.

The gateway forwards the method, the path under ``/hubspot``, the query (without the
broker's own ``app`` and ``user_id``), the body and the headers (without hop-by-hop ones,
the caller's ``Authorization`` and cookies) to HubSpot's API host with the portal's token,
and answers HubSpot's status, headers (again without hop-by-hop ones and cookies) and body
as they arrive. Bodies stream both ways; a request body up to :data:`_REPLAYABLE` bytes is
held whole, so it can be sent again after a 401 (:mod:`broker.core.gateway`). Our own errors
are problem+json: 413 ``body_too_large`` (over ``gateway_max_body``), 429
``portal_budget_exhausted``, 502 ``hubspot_unreachable``, 504 ``hubspot_timeout``, and the
token route's (401, 403, 404, 409, 410, 503). Served as raw ASGI in front of the Starlette
app (:class:`GatewayRoute`), as the token route is: no router, no middleware stack.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import unquote_plus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from broker import metrics, metrics_gateway
from broker.core.models import Caller, PortalKey, Role
from broker.core.ports.budget import BudgetState
from broker.core.ports.hubspot_api import REQUEST_DROPPED, ApiRequest, without
from broker.errors import Forbidden, InvalidRequest, PayloadTooLarge
from broker.logs import REQUEST_ID
from broker.web import problems
from broker.web.middleware import (
    CLOSE,
    authorization_and_id,
    log_server_error,
    observe,
    request_id,
)
from broker.web.params import bearer_of, check_names, json_body, parse_app, parse_int
from broker.web.services import Services

#: Request bodies up to this many bytes are read whole before sending (and can be re-sent).
_REPLAYABLE = 64 * 1024
_OURS = ("app", "user_id")
PATH = "/v1/portals/{hub_id}/hubspot/{path}"
#: The methods :data:`PATH` serves (``HEAD`` too, as Starlette's routes serve it with ``GET``).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_ALLOW = {"Allow": ", ".join(sorted(METHODS))}
_PREFIX, _MIDDLE = "/v1/portals/", "/hubspot/"
_BUDGET_PARAMS = frozenset(_OURS)


async def _caller(services: Services, header: bytes | None) -> Caller:
    """The token route's authentication and per-caller rate, for these routes."""
    callers = services.callers
    caller = callers.known(header, time.monotonic())
    if caller is None:
        caller = await callers.authenticate(bearer_of(header), header=header)
    callers.admit(caller)
    return caller


def _split_query(raw: bytes) -> tuple[dict[str, str], bytes]:
    """The broker's parameters (decoded) and the rest of the query, as it came."""
    ours: dict[str, str] = {}
    rest: list[bytes] = []
    for part in raw.split(b"&"):
        name = part.partition(b"=")[0]
        if name.decode("latin-1") in _OURS:
            ours[name.decode("latin-1")] = unquote_plus(part.partition(b"=")[2].decode("latin-1"))
        elif part:
            rest.append(part)
    return ours, b"&".join(rest)


def _key(services: Services, hub: str, ours: dict[str, str]) -> PortalKey:
    app = parse_app(ours.get("app"), services.settings.default_app)
    hub_id = parse_int(hub, "hub_id") or 0
    return PortalKey(app, hub_id, parse_int(ours.get("user_id"), "user_id"))


async def _body(scope: Scope, receive: Receive, limit: int) -> bytes | AsyncIterator[bytes]:
    """The request body: bytes when small (or announced small), else a stream; a body over
    ``limit`` is refused (before reading when its length is announced)."""
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    announced = int(length) if length is not None and length.isdigit() else None
    if announced is not None and announced > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS") and announced in (None, 0):
        return b""
    if announced is not None and announced <= _REPLAYABLE:
        return b"".join([chunk async for chunk in _chunks(receive, limit)])
    return _chunks(receive, limit)


async def _chunks(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        chunk: bytes = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class GatewayRoute:
    """Serves :data:`PATH` as raw ASGI in front of ``app`` (which gets every other request),
    as the token route does (:mod:`broker.web.api`): what :class:`RequestIdMiddleware` and
    the Starlette router did for it is done inline (the request id, echoed and bound for log
    lines, the latency metric, ``Connection: close`` while draining, the refusal of U+0000,
    405 for other methods), and an error raised before the answer starts is problem+json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        hub, middle, rest = path[len(_PREFIX) :].partition(_MIDDLE)
        # What Starlette's "/v1/portals/{hub_id}/hubspot/{path:path}" matches (no newline).
        if (
            scope["type"] != "http"
            or not path.startswith(_PREFIX)
            or not middle
            or not hub
            or "/" in hub
            or "\n" in path
        ):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        authorization, presented_id = authorization_and_id(scope)
        rid = request_id(presented_id)
        context = REQUEST_ID.set(rid.decode())
        services: Services = scope["state"]["services"]
        status = 0  # the answer's, once it started
        try:
            if b"%00" in scope["query_string"] or "\x00" in path:
                raise InvalidRequest("parameters may not contain U+0000")
            if scope["method"] not in METHODS:
                raise HTTPException(405, headers=_ALLOW)
            gateway = services.gateway
            if gateway is None:
                raise Forbidden("the HubSpot gateway is not enabled on this replica")
            caller = await _caller(services, authorization)
            ours, query = _split_query(scope["query_string"])
            key = _key(services, hub, ours)
            target = "/" + rest
            gateway.authorize(caller, key, target)
            request = ApiRequest(
                scope["method"],
                target,
                query,
                without(scope["headers"], REQUEST_DROPPED),
                await _body(scope, receive, services.settings.gateway_max_body),
            )
            async with gateway.forward(caller, key, request) as answer:
                code = answer.status
                metrics_gateway.GATEWAY_REQUESTS.labels(f"{code // 100}xx").inc()
                headers = list(answer.headers)
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                headers += _ours(services, rid)
                await send({"type": "http.response.start", "status": code, "headers": headers})
                status = code
                async for chunk in answer.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except Exception as exc:
            if status:  # too late for a problem: the server aborts the answer
                raise
            response = problems.render(exc)
            response.raw_headers += _ours(services, rid)
            await response(scope, receive, send)
            status = response.status_code
        finally:
            status = status or 500  # none sent (cancelled): as the middleware counted it
            observe(metrics.Route.API, status, started)
            if status >= 500:
                log_server_error(scope, status, started)
            REQUEST_ID.reset(context)


def _ours(services: Services, rid: bytes) -> list[tuple[bytes, bytes]]:
    """The headers the broker adds to every answer: the request id, and ``Connection:
    close`` while the replica drains (so keep-alive callers reconnect elsewhere)."""
    if services.health.draining:
        return [(b"x-request-id", rid), CLOSE]
    return [(b"x-request-id", rid)]


def _budget_view(state: BudgetState) -> dict[str, object]:
    return {
        "limit": state.limit,
        "used": state.used,
        "remaining": state.left,
        "interval_ms": 10_000,
        "daily_limit": state.daily_limit or None,
        "used_today": state.used_today,
    }


async def budget(request: Request) -> Response:
    """``GET``: the portal's budget now; ``POST {"used": n}``: n HubSpot calls made outside
    the gateway, counted as taken. The token route's authorization (``tokens:read``)."""
    services: Services = request.state.services
    gateway = services.gateway
    if gateway is None:
        raise Forbidden("the HubSpot gateway is not enabled on this replica")
    header = next((v for k, v in request.scope["headers"] if k == b"authorization"), None)
    caller = await _caller(services, header)
    check_names(request.query_params.keys(), _BUDGET_PARAMS)
    key = _key(services, request.path_params["hub_id"], dict(request.query_params))
    if Role.TOKENS_READ not in caller.roles or not caller.may_access(key.app, key.hub_id):
        raise Forbidden(f"caller {caller.name!r} may not read the budget of portal {key}")
    if request.method == "GET":
        return JSONResponse(_budget_view(await gateway.budget.read(key)))
    body = await json_body(request)  # bounded, and 422 for what is not JSON or too deep
    used = body.get("used") if isinstance(body, dict) and body.keys() == {"used"} else None
    if isinstance(used, float) and used.is_integer():  # 1.0 is an integer to JSON Schema
        used = int(used)
    if not isinstance(used, int) or isinstance(used, bool) or not 1 <= used <= 10_000:
        raise InvalidRequest(
            'the body must be {"used": n} with n from 1 to 10000',
            errors=[{"field": "used", "message": "invalid"}],
        )
    return JSONResponse(_budget_view(await gateway.budget.report(key, used)))


routes = [
    Route("/v1/portals/{hub_id}/budget", budget, methods=["GET", "POST"]),
]
