"""The internal API for services: ``GET /v1/portals/{hub_id}/token``.

Every internal service calls this route before every HubSpot call, so it is served as raw
ASGI in front of the Starlette app (:class:`TokenRoute`): no ``Request`` object, no
middleware stack, one pass over the headers, and a response made of pre-encoded parts kept
with the cached token (``CachedToken.head``/``tail``), only ``expires_in`` being formatted
per request. It is still authenticated, authorized, rate limited, metered and audited, and its
errors are the same problem+json as every other route's. A request whose caller and token are
both known here (:meth:`CallerService.known`, :meth:`TokenService.cached`) awaits nothing
but the response's two sends.
"""

from __future__ import annotations

import json
import sys
import time
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from broker import metrics
from broker.core.models import PRIVATE_APP, IssuedToken, PortalKey
from broker.logs import REQUEST_ID
from broker.web import problems
from broker.web.middleware import (
    CLOSE,
    authorization_and_id,
    log_server_error,
    observe,
    request_id,
)
from broker.web.params import bearer_of, check_names, parse_app, parse_int
from broker.web.services import Services

PATH = "/v1/portals/{hub_id}/token"
_PREFIX, _SUFFIX = "/v1/portals/", "/token"
_PARAMS = frozenset({"app", "user_id", "min_ttl"})
_JSON = (b"content-type", b"application/json")
_NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
#: Less than the caller's min_ttl is left (also ``"degraded": true`` in the body).
_DEGRADED = (b"broker-token-degraded", b"below-min-ttl")
_OPEN = b'{"token_type": "bearer", "access_token": "'
#: The parts after ``expires_in`` by their bytes: one per app and set of scopes, shared.
_TAILS: dict[bytes, bytes] = {}
_TAILS_MAX = 1000
_TARGETS_MAX = 4096


class TokenRoute:
    """Serves :data:`PATH`; hands every other request to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (path, query string) -> the portal and min_ttl they name, for the requests parsed
        # lately (valid ones only; bounded): a service asks for the same portals again and
        # again. Made for one set of services (their settings decide defaults and bounds).
        self._targets: dict[tuple[str, bytes], tuple[PortalKey, int]] = {}
        self._targets_for: Services | None = None

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
        authorization, presented_id = authorization_and_id(scope)
        # One clock reading serves the caller's rate limit, the cache's expiry check and the
        # latency; the request id is bound for log lines only on the paths that can log.
        now = time.monotonic()
        rid = request_id(presented_id)
        services: Services = scope["state"]["services"]
        context = None
        try:
            if scope["method"] != "GET":
                raise HTTPException(405, headers={"Allow": "GET"})
            callers = services.callers
            caller = callers.known(authorization, now)
            if caller is None:
                context = REQUEST_ID.set(rid.decode())
                caller = await callers.authenticate(bearer_of(authorization), header=authorization)
            callers.admit(caller, now)
            query = scope["query_string"]
            target = self._targets.get((path, query))
            if target is None or self._targets_for is not services:
                target = self._parse(services, path, hub, query)
            key, min_ttl = target
            issued = services.tokens.cached(caller, key, min_ttl, now)
            if issued is None:
                if context is None:
                    context = REQUEST_ID.set(rid.decode())
                issued = await services.tokens.get_token(caller, key, min_ttl)
        except Exception as exc:  # every error is a problem+json, as on the other routes
            if context is None:
                context = REQUEST_ID.set(rid.decode())
            response = problems.render(exc)
            response.raw_headers.append((b"x-request-id", rid))
            if services.health.draining:
                response.raw_headers.append(CLOSE)
            await response(scope, receive, send)
            observe(metrics.Route.TOKEN, response.status_code, now)
            if response.status_code >= 500:
                log_server_error(scope, response.status_code, now)
        else:
            body = _body(issued)
            headers = [_JSON, (b"content-length", b"%d" % len(body)), *_NO_STORE]
            headers.append((b"x-request-id", rid))
            if issued.degraded:
                headers.append(_DEGRADED)
            if services.health.draining:
                headers.append(CLOSE)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            metrics.TOKEN_ROUTE_OK.observe(time.monotonic() - now)
        finally:
            if context is not None:
                REQUEST_ID.reset(context)

    def _parse(
        self, services: Services, path: str, hub: str, query: bytes
    ) -> tuple[PortalKey, int]:
        target = _target(services, hub, query)
        if self._targets_for is not services or len(self._targets) >= _TARGETS_MAX:
            self._targets.clear()
            self._targets_for = services
        self._targets[(path, query)] = target
        return target


def _target(svc: Services, hub: str, raw_query: bytes) -> tuple[PortalKey, int]:
    """The portal and ``min_ttl`` a request names; a 422 naming what is wrong."""
    text = raw_query.decode("latin-1")
    query: dict[str, str] = {}
    if "%" in text or "+" in text:
        # The last value of a repeated name wins, as in Starlette.
        query.update(parse_qsl(text, keep_blank_values=True))
    else:  # nothing to unquote: what parse_qsl answers, for less
        for part in text.split("&"):
            if part:
                name, _, value = part.partition("=")
                query[name] = value
    if not query.keys() <= _PARAMS:  # unknown names are a 422
        check_names(query, _PARAMS)
    hub_id = parse_int(hub, "hub_id") or 0
    user_id = parse_int(query.get("user_id"), "user_id")
    tokens = svc.tokens
    min_ttl = tokens.resolve_min_ttl(parse_int(query.get("min_ttl"), "min_ttl", minimum=0))
    # Interned: the key a cache entry is filed under shares its app's name with the others.
    app = sys.intern(parse_app(query.get("app"), svc.settings.default_app))
    return PortalKey(app, hub_id, user_id), min_ttl


def _body(issued: IssuedToken) -> bytes:
    """The JSON answer: the entry's token between parts encoded once per cached token (the
    part after ``expires_in`` shared by the entries of one app and scopes), only
    ``expires_in`` formatted per request."""
    entry = issued.entry
    if issued.expires_in is None:
        return _static_body(issued)
    head, tail = entry.head, entry.tail
    if head is None or tail is None:
        head, tail = entry.head, entry.tail = _parts(issued)
    if not head:  # a token JSON has to escape (HubSpot's never do): encoded in full
        before, after = _fields(issued)
        token, expires_in = issued.access_token, issued.expires_in
        answer = {"token_type": "bearer", "access_token": token, **before}
        answer |= {"expires_in": expires_in, **after}
        return json.dumps({**answer, "degraded": issued.degraded}).encode()
    if issued.degraded:  # rare: not worth a pre-encoded variant
        tail = tail[: -len(b"false}")] + b"true}"
    return b"%s%s%s%d%s" % (_OPEN, entry.token, head, issued.expires_in, tail)


def _static_body(issued: IssuedToken) -> bytes:
    """A static token's answer (a private app's): no ``expires_in``/``expires_at``, and
    ``token_kind``; the same for every request, so encoded once and kept with the entry."""
    entry = issued.entry
    if entry.head is None:
        before, after = _fields(issued, static=True)
        answer = {"token_type": "bearer", "access_token": issued.access_token, **before}
        entry.head = json.dumps({**answer, **after, "degraded": False}).encode()
    return entry.head


def _fields(
    issued: IssuedToken, *, static: bool = False
) -> tuple[dict[str, object], dict[str, object]]:
    """The answer's fields but the token, ``expires_in`` and ``degraded``: those before
    ``expires_in`` (particular to the entry) and those after (shared by many)."""
    key = issued.key
    before: dict[str, object] = (
        {"token_kind": PRIVATE_APP}
        if static
        else {"expires_at": issued.expires_at.isoformat().replace("+00:00", "Z")}
    )
    before["hub_id"] = key.hub_id
    if key.user_id is not None:
        before["user_id"] = key.user_id
    return before, {"app": key.app, "scopes": list(issued.scopes)}


def _parts(issued: IssuedToken) -> tuple[bytes, bytes]:
    """What follows the token up to ``expires_in``'s value (empty when the token is not
    JSON as it is), and what follows that value (as not degraded)."""
    before, after = _fields(issued)
    tail = b", " + json.dumps({**after, "degraded": False})[1:].encode()
    if len(_TAILS) >= _TAILS_MAX:
        _TAILS.clear()
    tail = _TAILS.setdefault(tail, tail)
    token = issued.access_token
    if json.dumps(token) != f'"{token}"':
        return b"", tail
    return f'", {json.dumps(before)[1:-1]}, "expires_in": '.encode(), tail
