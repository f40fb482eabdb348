"""``/admin/login`` and ``/admin/logout``: a caller key with ``portals:admin`` in (single
sign-on is :mod:`.sso`), a sealed session cookie out (:mod:`broker.web.admin_session`);
logging out deletes the cookie."""

from __future__ import annotations

import secrets
import time

import structlog
from starlette.requests import Request
from starlette.responses import Response

from broker import metrics
from broker.config import Settings
from broker.core.models import Role
from broker.errors import BrokerError, Forbidden, InvalidRequest, Unauthenticated
from broker.web.admin_page._render import form, page, pages, redirect
from broker.web.admin_session import (
    SESSION_SECONDS,
    Session,
    check_csrf,
    require_operator,
    same_origin,
    start_session,
)
from broker.web.params import reject_unknown
from broker.web.services import services

log = structlog.get_logger(__name__)


def _login_page(request: Request, settings: Settings, error: BrokerError | None = None) -> Response:
    """Single sign-on when an issuer is configured; the caller-key form unless SSO is on and
    the key login was not opted back in (``BROKER_ADMIN_KEY_LOGIN``)."""
    context = {"error": error, "sso": settings.oidc_enabled, "keys": settings.key_login_enabled}
    if error is None:
        return page(request, "login.html", context)
    metrics.REQUEST_ERRORS.labels(error.code).inc()
    return page(request, "login.html", context, status=error.status, headers=error.headers())


@pages
async def login(request: Request) -> Response:
    reject_unknown(request, frozenset())
    svc = services(request)
    if request.method != "POST":
        return _login_page(request, svc.settings)
    same_origin(request)
    if not svc.settings.key_login_enabled:
        raise Forbidden(
            "caller-key login is off while single sign-on is configured: sign in with SSO "
            "(BROKER_ADMIN_KEY_LOGIN=true turns it back on)",
            code="key_login_disabled",
        )
    try:
        key = (await form(request, frozenset({"key"}))).get("key", "").strip()
        if not key:
            raise InvalidRequest("paste a caller key")
        caller = await svc.callers.authenticate(key)
    except (InvalidRequest, Unauthenticated) as exc:
        return _login_page(request, svc.settings, exc)
    svc.callers.admit(caller)
    if not caller.may(Role.PORTALS_ADMIN):
        raise Forbidden(f"caller {caller.name!r} lacks the portals:admin role")
    now = int(time.time())
    expires = now + SESSION_SECONDS
    if caller.expires_at is not None:
        expires = min(expires, int(caller.expires_at.timestamp()))
    session = Session(caller.id, caller.name, expires, secrets.token_urlsafe(16))
    response = redirect("/admin", request)
    await start_session(response, request, svc, session, now=now)
    log.info("admin_page.login", caller=caller.name)
    return response


@pages
async def logout(request: Request) -> Response:
    operator = await require_operator(request, services(request))
    reject_unknown(request, frozenset())
    check_csrf(operator, (await form(request, frozenset({"csrf"}))).get("csrf"))
    log.info("admin_page.logout", caller=operator.caller.name)
    return redirect("/admin/login", request, clear_session=True)
