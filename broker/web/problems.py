"""Render every error as ``application/problem+json`` (RFC 9457) with a stable ``code``.

Known errors (:class:`~broker.errors.BrokerError`) carry their status, code and headers.
Unknown exceptions are bugs: logged with their traceback, answered with a bare 500
``internal`` problem that reveals nothing.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from broker import metrics
from broker.errors import BrokerError, InvalidRequest
from broker.logs import REQUEST_ID

log = structlog.get_logger(__name__)

PROBLEM_TYPE = "application/problem+json"
_TYPE_BASE = "https://hubspot-token-broker.dev/problems/"
_HTTP_CODES = {404: "route_not_found", 405: "method_not_allowed"}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": _TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    request_id = REQUEST_ID.get()
    if request_id is not None:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    metrics.REQUEST_ERRORS.labels(code).inc()
    all_headers = {"Cache-Control": "no-store", **(headers or {})}
    return Response(
        json.dumps(body), status_code=status, headers=all_headers, media_type=PROBLEM_TYPE
    )


def from_error(exc: BrokerError) -> Response:
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidRequest) and exc.errors:
        extra["errors"] = exc.errors
    if exc.status >= 500:
        log.warning("request.upstream_error", code=exc.code, error=type(exc).__name__)
    return problem(exc.status, exc.code, exc.title, exc.detail, headers=exc.headers(), extra=extra)


def render(exc: Exception) -> Response:
    """The problem for any exception a route raised."""
    if isinstance(exc, BrokerError):
        return from_error(exc)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        return problem(exc.status_code, code, exc.detail, exc.detail, headers=headers)
    log.error("request.unhandled_exception", exc_info=exc)
    return problem(500, "internal", "Internal error", "the broker hit an unexpected error")


async def _handler(_: Request, exc: Exception) -> Response:
    return render(exc)


HANDLERS = {BrokerError: _handler, HTTPException: _handler, Exception: _handler}
