"""``/admin/login`` and ``/admin/logout``: a caller key with ``portals:admin`` in, a sealed
session cookie out (:mod:`broker.web.admin_session`); logging out deletes the cookie."""

from __future__ import annotations

import secrets
import time

import structlog
from starlette.requests import Request
from starlette.responses import Response

from broker import metrics
from broker.core.models import Role
from broker.errors import BrokerError, Forbidden, InvalidRequest, Unauthenticated
from broker.web.admin_page._render import form, page, pages, redirect
from broker.web.admin_session import (
    COOKIE,
    SESSION_SECONDS,
    Session,
    check_csrf,
    require_operator,
    same_origin,
    seal,
)
from broker.web.params import reject_unknown
from broker.web.services import services

log = structlog.get_logger(__name__)


def _login_page(request: Request, error: BrokerError | None = None) -> Response:
    if error is None:
        return page(request, "login.html", {"error": None})
    metrics.REQUEST_ERRORS.labels(error.code).inc()
    return page(
        request, "login.html", {"error": error}, status=error.status, headers=error.headers()
    )


@pages
async def login(request: Request) -> Response:
    reject_unknown(request, frozenset())
    if request.method != "POST":
        return _login_page(request)
    svc = services(request)
    same_origin(request)
    try:
        key = (await form(request, frozenset({"key"}))).get("key", "").strip()
        if not key:
            raise InvalidRequest("paste a caller key")
        caller = await svc.callers.authenticate(key)
    except (InvalidRequest, Unauthenticated) as exc:
        return _login_page(request, exc)
    svc.callers.admit(caller)
    if not caller.may(Role.PORTALS_ADMIN):
        raise Forbidden(f"caller {caller.name!r} lacks the portals:admin role")
    now = int(time.time())
    expires = now + SESSION_SECONDS
    if caller.expires_at is not None:
        expires = min(expires, int(caller.expires_at.timestamp()))
    session = Session(caller.id, caller.name, expires, secrets.token_urlsafe(16))
    response = redirect("/admin", request)
    response.set_cookie(
        COOKIE,
        await seal(svc.keyring, session),
        max_age=expires - now,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    log.info("admin_page.login", caller=caller.name)
    return response


@pages
async def logout(request: Request) -> Response:
    operator = await require_operator(request, services(request))
    reject_unknown(request, frozenset())
    check_csrf(operator, (await form(request, frozenset({"csrf"}))).get("csrf"))
    log.info("admin_page.logout", caller=operator.caller.name)
    return redirect("/admin/login", request, clear_session=True)
