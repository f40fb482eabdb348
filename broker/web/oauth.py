"""The browser side of installing a portal: ``/oauth/install`` and ``/oauth/callback``.

``/oauth/install`` starts a flow only for an operator-signed ``link`` (403
``install_link_required`` / ``_invalid`` / ``_expired``) unless links are not required.

People see these pages, so they answer HTML (or problem+json when asked for JSON). The
install cookie binds the callback to the browser that started the flow; it is HttpOnly,
SameSite=Lax (HubSpot's redirect back is a top-level GET, which Lax allows) and scoped to
``/oauth``.
"""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from broker.errors import BrokerError
from broker.web.params import parse_app, reject_unknown
from broker.web.problems import from_error
from broker.web.services import services

COOKIE = "htb_install"
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:0 .2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int, headers: dict[str, str] | None = None) -> Response:
    content = _PAGE.format(title=html.escape(title), body=body)
    all_headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        **(headers or {}),
    }
    return HTMLResponse(content, status_code=status, headers=all_headers)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "json" in accept and "text/html" not in accept


def _error(request: Request, exc: BrokerError) -> Response:
    if _wants_json(request):
        response = from_error(exc)
    else:
        body = (
            f"<p>{html.escape(exc.detail)}</p>"
            f"<p>Error code: <code>{html.escape(exc.code)}</code></p>"
            "<p>Nothing was stored. Start the installation again from the install link.</p>"
        )
        response = _page("Installation failed", body, exc.status, exc.headers())
    _forget_flow(response, request)
    return response


def _forget_flow(response: Response, request: Request) -> None:
    """Delete the install cookie with the flags it was set with (Secure over https)."""
    response.delete_cookie(
        COOKIE, path="/oauth", httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )


async def install(request: Request) -> Response:
    svc = services(request)
    try:
        reject_unknown(request, frozenset({"app", "return_to", "link"}))
        app = parse_app(request.query_params.get("app"), svc.settings.default_app)
        start = await svc.installs.begin(
            app,
            actor="browser",
            return_to=request.query_params.get("return_to"),
            link=request.query_params.get("link") or None,  # an empty one is no link
        )
    except BrokerError as exc:
        return _error(request, exc)
    response = RedirectResponse(start.authorize_url, status_code=302)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.set_cookie(
        COOKIE,
        start.browser_nonce,
        max_age=svc.settings.install_state_ttl,
        path="/oauth",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def callback(request: Request) -> Response:
    svc = services(request)
    query = request.query_params
    try:
        installed = await svc.installs.complete(
            state=query.get("state"),
            code=query.get("code"),
            error=query.get("error"),
            browser_nonce=request.cookies.get(COOKIE),
            callback_url=str(request.url.replace(query="", fragment="")),
        )
    except BrokerError as exc:
        return _error(request, exc)
    record = installed.record
    if installed.return_to:
        redirect = RedirectResponse(installed.return_to, status_code=303)
        _forget_flow(redirect, request)
        return redirect
    key = record.key
    scopes = ", ".join(f"<code>{html.escape(s)}</code>" for s in record.scopes)
    body = (
        f"<p>Portal <strong>{key.hub_id}</strong>"
        f"{' (' + html.escape(record.hub_domain) + ')' if record.hub_domain else ''}"
        f" is connected to app <code>{html.escape(key.app)}</code>.</p>"
        f"<p>Granted scopes: {scopes or 'none'}</p>"
        "<p>Internal services can now request its access token from the broker.</p>"
    )
    response = _page("Portal connected", body, 200)
    _forget_flow(response, request)
    return response


routes = [
    Route("/oauth/install", install, methods=["GET"]),
    Route("/oauth/callback", callback, methods=["GET"]),
]
