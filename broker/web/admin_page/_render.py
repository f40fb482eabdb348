"""Rendering for the operator page: Jinja2 templates with autoescape on, the stylesheet as a
file of our own (so the CSP needs no inline anything), the security headers every answer
carries, errors as HTML pages, and the strict form parser the POSTs share.

Autoescape is on for every template and undefined names are errors, so a value can only
reach the page escaped; a template that wants markup from Python must say so (none does)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jinja2
import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from broker import metrics
from broker.errors import BrokerError, InvalidRequest
from broker.logs import REQUEST_ID
from broker.web.admin_session import COOKIE

log = structlog.get_logger(__name__)

_HERE = Path(__file__).parent
STYLESHEET = "/admin/static/admin.css"
#: No script, no inline style, nothing from elsewhere: our stylesheet and forms to us.
CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    # Not no-referrer: under it browsers send "Origin: null" with every form POST (Fetch
    # spec), which would defeat the Origin check. same-origin still tells no one else.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_MAX_FORM_BYTES = 16 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def _moment(value: datetime | str | None) -> datetime | None:
    """A view's time (an ISO string, as :func:`~broker.core.admin.portal_view` gives it)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _when(value: datetime | str | None, seconds: bool = False) -> str:
    moment = _moment(value)
    if moment is None:
        return "—"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M{':%S' if seconds else ''}} UTC"


def _iso(value: datetime | str | None) -> str:
    moment = _moment(value)
    return "" if moment is None else moment.isoformat()


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = _when
_env.filters["iso"] = _iso
_templates = Jinja2Templates(env=_env)


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return _templates.TemplateResponse(
        request,
        template,
        {"stylesheet": STYLESHEET, **context},
        status_code=status,
        headers={**HEADERS, **(headers or {})},
    )


@functools.cache
def _css() -> bytes:
    return (_HERE / "static" / "admin.css").read_bytes()


async def stylesheet(request: Request) -> Response:
    """The page's one stylesheet, under the same headers as the pages."""
    return Response(_css(), media_type="text/css", headers=HEADERS)


def redirect(url: str, request: Request, *, clear_session: bool = False) -> Response:
    response = RedirectResponse(url, status_code=303, headers=HEADERS)
    if clear_session:
        clear(response, request)
    return response


def clear(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def error_page(request: Request, exc: BrokerError) -> Response:
    metrics.REQUEST_ERRORS.labels(exc.code).inc()
    if exc.status >= 500:
        log.warning("request.upstream_error", code=exc.code, error=type(exc).__name__)
    context = {"error": exc, "request_id": REQUEST_ID.get(), "login": exc.status == 401}
    response = page(request, "error.html", context, status=exc.status, headers=exc.headers())
    if exc.status == 401:
        clear(response, request)
    return response


def pages(endpoint: Endpoint) -> Endpoint:
    """Answer every deliberate error as an HTML page with its status and stable code."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BrokerError as exc:
            return error_page(request, exc)

    return run


async def form(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body of at most 16 KiB, each field once."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("send the form as application/x-www-form-urlencoded")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_FORM_BYTES:
            raise InvalidRequest("the form is larger than 16 KiB")
    try:
        pairs = parse_qsl(raw.decode(), keep_blank_values=True, max_num_fields=len(allowed))
    except ValueError as exc:  # also UnicodeDecodeError, and too many fields
        raise InvalidRequest("the form is not url-encoded UTF-8 with known fields") from exc
    fields = dict(pairs)
    unknown = sorted(set(fields) - allowed)
    if unknown or len(fields) != len(pairs):
        raise InvalidRequest(
            "the form has unknown or repeated fields",
            errors=[{"field": name[:64], "message": "unknown field"} for name in unknown[:10]],
        )
    if any("\x00" in name or "\x00" in value for name, value in pairs):
        raise InvalidRequest("the form may not contain U+0000")  # PostgreSQL stores none
    return fields
