"""A pure-ASGI middleware: a request id per request (from ``X-Request-ID`` when it is sane,
else generated), echoed in the response and bound for log lines; the request's latency
observed per route (a bounded label); server errors are logged as events. Pure ASGI rather
than ``BaseHTTPMiddleware``; the token route (:mod:`broker.web.api`) and the gateway
(:mod:`broker.web.gateway`) do the same inline with :func:`request_id`, :func:`observe` and
:func:`log_server_error`."""

from __future__ import annotations

import itertools
import re
import secrets
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import metrics
from broker.errors import InvalidRequest
from broker.logs import REQUEST_ID
from broker.web.problems import from_error

log = structlog.get_logger("broker.http")
#: Sent while the replica drains: keep-alive callers reconnect, to a replica still serving.
CLOSE = (b"connection", b"close")
_SANE_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
# Request ids only need to be unique, not secret: a random per-process prefix and a counter
# (no system call per request, unlike secrets.token_hex).
_PREFIX = secrets.token_hex(5).encode()
_COUNTER = itertools.count()


def request_id(presented: bytes | None) -> bytes:
    """The caller's ``X-Request-ID`` when it is sane, else a new one (ASCII)."""
    if presented is not None and _SANE_ID.match(presented):
        return presented
    return b"%s%06x" % (_PREFIX, next(_COUNTER))


def authorization_and_id(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The first ``Authorization`` and ``X-Request-ID`` headers (one pass: the raw routes')."""
    authorization = presented_id = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"x-request-id" and presented_id is None:
            presented_id = value
    return authorization, presented_id


def route_of(path: str) -> metrics.Route:
    """The bounded ``route`` label for a request path."""
    if path.startswith("/v1/"):
        return metrics.Route.API
    if path.startswith("/oauth/"):
        return metrics.Route.OAUTH
    if path == "/admin" or path.startswith("/admin/"):
        return metrics.Route.ADMIN_PAGE
    if path in ("/livez", "/readyz"):
        return metrics.Route.PROBES
    if path == "/metrics":
        return metrics.Route.METRICS
    return metrics.Route.OTHER


def observe(route: metrics.Route, status: int, started: float) -> None:
    """``started``: the request's ``time.monotonic()`` reading."""
    metrics.HTTP_REQUEST_SECONDS.labels(route, f"{status // 100}xx").observe(
        time.monotonic() - started
    )


def log_server_error(scope: Scope, status: int, started: float) -> None:
    log.warning(
        "http.request",
        method=scope["method"],
        path=scope["path"],
        status=status,
        ms=round((time.monotonic() - started) * 1000, 2),
    )


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                presented = value
                break
        rid = request_id(presented)
        token = REQUEST_ID.set(rid.decode())
        header = (b"x-request-id", rid)
        started = time.monotonic()
        status = 500

        services = scope.get("state", {}).get("services")
        app = self.app
        if b"%00" in scope["query_string"] or "\x00" in scope["path"]:
            # No parameter may carry U+0000 (PostgreSQL stores none): one refusal here, not
            # a check in every place that reads a parameter.
            app = from_error(InvalidRequest("parameters may not contain U+0000"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
                if services is not None and services.health.draining:
                    message["headers"].append(CLOSE)
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            observe(route_of(scope["path"]), status, started)
            if status >= 500:
                log_server_error(scope, status, started)
            REQUEST_ID.reset(token)
