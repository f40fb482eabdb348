"""Single sign-on for the operator page (:mod:`broker.core.sso` has the security
properties): ``GET /admin/oidc/login`` sends the browser to the OpenID Provider, and
``GET /admin/oidc/callback`` is where it comes back, with a session on success (a page
that moves on to ``/admin`` at once, see :func:`callback`).

The flow cookie ``htb_sso`` (the sealed ``state``, ``nonce`` and PKCE verifier) is HttpOnly,
``Path=/admin/oidc``, Secure over https and lives 10 minutes. It is ``SameSite=Lax``, not
Strict like the session: the callback is a top-level navigation from the IdP's site, which
Strict would send without it. It is deleted by the callback, whatever the outcome.
"""

from __future__ import annotations

import secrets
import time

import structlog
from starlette.requests import Request
from starlette.responses import Response

from broker.core.sso import FLOW_SECONDS, Callback, SsoLogin
from broker.errors import BrokerError, InvalidRequest, NotFound
from broker.web.admin_page._render import error_page, page, pages, redirect
from broker.web.admin_session import SESSION_SECONDS, Session, start_session
from broker.web.params import reject_unknown
from broker.web.services import Services, services

log = structlog.get_logger(__name__)

FLOW_COOKIE = "htb_sso"
_FLOW_PATH = "/admin/oidc"
CALLBACK_PATH = "/admin/oidc/callback"
#: What an OpenID Provider may put on the callback (RFC 6749, 4.1.2; RFC 9207; OIDC
#: session management); anything else is refused.
_CALLBACK_PARAMS = frozenset(
    {"state", "code", "error", "error_description", "error_uri", "iss", "session_state"}
)


def _sso(svc: Services) -> SsoLogin:
    if svc.sso is None:
        raise NotFound("single sign-on is not configured here", code="sso_not_configured")
    return svc.sso


def _redirect_uri(request: Request, svc: Services) -> str:
    configured = svc.settings.oidc_redirect_uri
    return configured or f"{request.url.scheme}://{request.url.netloc}{CALLBACK_PATH}"


def _drop_flow(response: Response, request: Request) -> None:
    response.delete_cookie(
        FLOW_COOKIE,
        path=_FLOW_PATH,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


@pages
async def login(request: Request) -> Response:
    svc = services(request)
    sso = _sso(svc)
    reject_unknown(request, frozenset())
    start = await sso.begin(_redirect_uri(request, svc))
    response = redirect(start.url, request)
    response.set_cookie(
        FLOW_COOKIE,
        start.flow,
        max_age=FLOW_SECONDS,
        path=_FLOW_PATH,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@pages
async def callback(request: Request) -> Response:
    svc = services(request)
    sso = _sso(svc)
    try:
        reject_unknown(request, _CALLBACK_PARAMS)
        query = request.query_params
        if len(query.multi_items()) != len(query):  # RFC 6749, 3.1: none may repeat
            raise InvalidRequest("a query parameter is repeated")
        caller = await sso.finish(
            Callback(
                flow=request.cookies.get(FLOW_COOKIE),
                state=query.get("state"),
                code=query.get("code"),
                error=query.get("error"),
                iss=query.get("iss"),
            )
        )
    except BrokerError as exc:
        log.info("admin_page.sso_refused", code=exc.code)
        response = error_page(request, exc)
        _drop_flow(response, request)
        return response
    svc.callers.admit(caller)
    now = int(time.time())
    session = Session(
        caller.id,
        caller.name,
        now + SESSION_SECONDS,
        secrets.token_urlsafe(16),
        kind="oidc",
        roles=caller.roles,
        apps=caller.apps,
    )
    # Not a redirect: the browser arrived here from the IdP's site, and a redirect would
    # carry that cross-site origin on to /admin, where the SameSite=Strict session cookie
    # is then withheld. A refresh from this page is a navigation of this site.
    response = page(
        request, "signed_in.html", {"name": caller.name}, headers={"Refresh": "0; url=/admin"}
    )
    await start_session(response, request, svc, session, now=now)
    _drop_flow(response, request)
    log.info("admin_page.login", caller=caller.name, via="oidc")
    return response
