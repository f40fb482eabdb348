"""The internal API for services: ``GET /v1/portals/{hub_id}/token``.

Every internal service calls this route before every HubSpot call, so it is served as raw
ASGI in front of the Starlette app (:class:`TokenRoute`): no ``Request`` object, no
middleware stack, one pass over the headers, and a response made of pre-encoded parts kept
with the cached token (``IssuedToken.memo``), only ``expires_in`` being formatted per
request. It is still authenticated, authorized, rate limited, metered and audited, and its
errors are the same problem+json as every other route's.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from broker import metrics
from broker.core.models import IssuedToken, PortalKey
from broker.logs import REQUEST_ID
from broker.web import problems
from broker.web.middleware import CLOSE, log_server_error, observe, request_id
from broker.web.params import bearer_value, check_names, parse_app, parse_int
from broker.web.services import Services

PATH = "/v1/portals/{hub_id}/token"
_PREFIX, _SUFFIX = "/v1/portals/", "/token"
_PARAMS = frozenset({"app", "user_id", "min_ttl"})
_JSON = (b"content-type", b"application/json")
_NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
#: Less than the caller's min_ttl is left (also ``"degraded": true`` in the body).
_DEGRADED = (b"broker-token-degraded", b"below-min-ttl")


class TokenRoute:
    """Serves :data:`PATH`; hands every other request to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        hub = path[len(_PREFIX) : -len(_SUFFIX)]
        if (
            scope["type"] != "http"
            or not path.startswith(_PREFIX)
            or not path.endswith(_SUFFIX)
            or not hub
            or "/" in hub
        ):
            await self.app(scope, receive, send)
            return
        authorization = presented_id = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"x-request-id" and presented_id is None:
                presented_id = value
        started = time.perf_counter()
        rid = request_id(presented_id)
        context = REQUEST_ID.set(rid)
        try:
            if scope["method"] != "GET":
                raise HTTPException(405, headers={"Allow": "GET"})
            services: Services = scope["state"]["services"]
            header = None if authorization is None else authorization.decode("latin-1")
            issued = await _issue(services, hub, scope["query_string"], header)
        except Exception as exc:  # every error is a problem+json, as on the other routes
            response = problems.render(exc)
            response.raw_headers.append((b"x-request-id", rid.encode()))
            if scope["state"]["services"].health.draining:
                response.raw_headers.append(CLOSE)
            await response(scope, receive, send)
            observe(metrics.Route.TOKEN, response.status_code, started)
            if response.status_code >= 500:
                log_server_error(scope, response.status_code, started)
        else:
            body = _body(issued)
            headers = [
                _JSON,
                (b"content-length", b"%d" % len(body)),
                *_NO_STORE,
                (b"x-request-id", rid.encode()),
            ]
            if issued.degraded:
                headers.append(_DEGRADED)
            if services.health.draining:
                headers.append(CLOSE)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            metrics.TOKEN_ROUTE_OK.observe(time.perf_counter() - started)
        finally:
            REQUEST_ID.reset(context)


async def _issue(
    svc: Services, hub: str, raw_query: bytes, authorization: str | None
) -> IssuedToken:
    caller = await svc.callers.authenticate(bearer_value(authorization))
    svc.callers.admit(caller)
    # The last value of a repeated name wins, as in Starlette; unknown names are a 422.
    query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True))
    if not query.keys() <= _PARAMS:
        check_names(query, _PARAMS)
    hub_id = parse_int(hub, "hub_id") or 0
    user_id = parse_int(query.get("user_id"), "user_id")
    tokens = svc.tokens
    min_ttl = tokens.resolve_min_ttl(parse_int(query.get("min_ttl"), "min_ttl", minimum=0))
    app = parse_app(query.get("app"), svc.settings.default_app)
    return await tokens.get_token(caller, PortalKey(app, hub_id, user_id), min_ttl)


def _body(issued: IssuedToken) -> bytes:
    """The JSON answer; its parts around ``expires_in`` are encoded once per cached token."""
    parts = issued.memo.get("json")
    if not (isinstance(parts, tuple) and parts[0] == issued.key):
        head = {
            "access_token": issued.access_token,
            "token_type": "bearer",
            "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
        }
        tail: dict[str, object] = {
            "hub_id": issued.key.hub_id,
            "app": issued.key.app,
            "scopes": list(issued.scopes),
        }
        if issued.key.user_id is not None:
            tail["user_id"] = issued.key.user_id
        tail["degraded"] = False
        parts = (
            issued.key,
            json.dumps(head)[:-1].encode() + b', "expires_in": ',
            b", " + json.dumps(tail)[1:].encode(),
        )
        issued.memo["json"] = parts
    if issued.degraded:  # rare: not worth a pre-encoded variant
        return b"%s%d%s" % (parts[1], issued.expires_in, parts[2][: -len(b"false}")] + b"true}")
    return b"%s%d%s" % (parts[1], issued.expires_in, parts[2])
