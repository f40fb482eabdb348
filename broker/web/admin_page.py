"""The operator page under ``/admin``: portals at a glance, and revoke, quarantine and release,
for people who would rather look than type. It calls the same use cases with the same
authorization as the JSON operator API (``broker.web.admin``); it never shows a token.

Security properties:

- **Login** is single sign-on through the OpenID Provider when ``BROKER_OIDC_ISSUER`` is
  set (:mod:`broker.web.admin_sso`, :mod:`broker.core.sso`), and otherwise (or with
  ``BROKER_ADMIN_KEY_LOGIN=true``) a caller key with the ``portals:admin`` role, checked by
  ``CallerService.authenticate``; the key is never stored. The session is the cookie
  ``htb_admin`` = base64url(JSON: kind, caller id and name, expiry, session id, and for SSO
  the mapped roles and apps) + its MAC under the session signing key (a Vault Transit key
  no one can read, rotatable with an overlap), so every replica accepts it and nobody can
  forge one (:mod:`broker.web.admin_session`). HttpOnly, SameSite=Strict, Path=/admin,
  Secure over https, 30 minutes, never extended. Every request re-reads a key session's
  caller: disabling it, its key expiring or it losing ``portals:admin`` ends its sessions
  at once; an SSO session's roles are those its groups mapped to at sign-in. Logging out
  deletes the cookie; a copied cookie stays valid until it expires (stateless sessions),
  hence the short lifetime.
- **CSRF**: every form carries the MAC of the session id under the session key's CSRF label
  (the version that sealed the session), compared in constant time; a POST
  whose ``Origin`` is not this origin, or whose ``Sec-Fetch-Site`` names another site, is
  refused before anything else.
- **Pages** run no script at all: the CSP allows nothing but the one inline stylesheet (by
  hash) and forms to this origin; no framing, no referrer to other origins, ``no-store``.
  Every value is HTML-escaped. The message after an action is a code from a fixed set plus a
  portal key, never free text from the URL, so a crafted link cannot put words on this page.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from broker import metrics
from broker.config import Settings
from broker.core.admin import portal_view
from broker.core.models import PortalKey, PortalRecord, PortalState, Role
from broker.errors import BrokerError, Forbidden, InvalidRequest, Unauthenticated
from broker.logs import REQUEST_ID
from broker.web.admin_session import (
    COOKIE,
    SESSION_SECONDS,
    Operator,
    Session,
    check_csrf,
    current_operator,
    require_operator,
    same_origin,
    start_session,
)
from broker.web.params import parse_app, parse_int, reject_unknown
from broker.web.services import Services, services

log = structlog.get_logger(__name__)

_LIST_LIMIT = 500
_MAX_FORM_BYTES = 16 * 1024
_PORTAL_TEXT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}/[1-9][0-9]{0,18}(/user/[1-9][0-9]{0,18})?\Z")
_FLASH = {
    "revoked": "Portal {} is revoked, here and at HubSpot.",
    "revoke_pending": "Portal {} is revoked here; HubSpot did not answer, so the broker keeps "
    "retrying the revoke there in the background.",
    "already_revoked": "Portal {} was already revoked.",
    "quarantined": "Portal {} is quarantined: no token is served until it is released.",
    "released": "Portal {} is released and serves tokens again.",
}
#: ``Revocation.upstream`` -> the ``done`` code the page shows.
_REVOKED = {
    "revoked": "revoked",
    "pending": "revoke_pending",
    "already_revoked": "already_revoked",
}
_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}"
    "header,main{padding:0 1.5rem}header{display:flex;flex-wrap:wrap;align-items:center;"
    "gap:1rem;background:#1f2d3d;color:#fff;padding:.7rem 1.5rem}"
    "header h1{font-size:1.15rem;margin:0;flex:1}header form{margin:0}"
    "h1{font-size:1.4rem}main.narrow{max-width:34rem;margin:3rem auto}"
    "nav{margin:1rem 0}nav a{margin-right:.3rem;padding:.2rem .6rem;border-radius:1rem;"
    "color:#1f2d3d;text-decoration:none;border:1px solid #c9ced6;background:#fff}"
    "nav a[aria-current]{background:#1f2d3d;color:#fff;border-color:#1f2d3d}"
    "table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}"
    "th,td{text-align:left;vertical-align:top;padding:.45rem .55rem;"
    "border-bottom:1px solid #e3e6ea}th{background:#eef0f3;white-space:nowrap}"
    ".scroll{overflow-x:auto}.muted{color:#6b7280}.nowrap{white-space:nowrap}"
    "code{background:#eef0f3;padding:0 .25rem;border-radius:3px}"
    ".state{display:inline-block;padding:0 .5rem;border-radius:1rem;font-weight:600;"
    "white-space:nowrap}.active{background:#dcfce7;color:#166534}"
    ".refresh_failing{background:#fef9c3;color:#854d0e}"
    ".needs_reauth{background:#ffedd5;color:#9a3412}"
    ".quarantined{background:#ede9fe;color:#5b21b6}.revoked{background:#e5e7eb;color:#374151}"
    "td form{display:flex;flex-wrap:wrap;gap:.35rem;margin:0 0 .3rem;min-width:13rem}"
    "td input{flex:1 0 100%;box-sizing:border-box}"
    "input{font:inherit;padding:.3rem .4rem;border:1px solid #aab1bb;border-radius:4px}"
    "button{font:inherit;padding:.3rem .7rem;border-radius:4px;border:1px solid #1f2d3d;"
    "background:#fff;cursor:pointer}button.danger{background:#b91c1c;border-color:#b91c1c;"
    "color:#fff}button.primary{background:#1f2d3d;color:#fff}"
    ".flash{background:#e0f2fe;border-left:4px solid #0284c7;padding:.6rem .9rem}"
    ".error{background:#fee2e2;border-left:4px solid #b91c1c;padding:.6rem .9rem}"
    "a.button{display:inline-block;padding:.4rem .9rem;border-radius:4px;background:#1f2d3d;"
    "color:#fff;text-decoration:none}"
    "label{display:block;margin:1rem 0 .3rem;font-weight:600}main.narrow input{width:100%;"
    "box-sizing:border-box}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
#: No script, no external anything: only the stylesheet above (by hash) and forms to us.
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    # Not no-referrer: under it browsers send "Origin: null" with every form POST (Fetch
    # spec), which would defeat the Origin check. same-origin still tells no one else.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

Endpoint = Callable[[Request], Awaitable[Response]]


async def _form(request: Request, allowed: frozenset[str]) -> dict[str, str]:
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
    return fields


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if not 0 < len(reason) <= 500:
        raise InvalidRequest(
            "a reason of 1-500 characters is required",
            errors=[{"field": "reason", "message": "1-500 characters"}],
        )
    return reason


# --- responses -------------------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value))


def _page(
    title: str, body: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)} · HubSpot token broker</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers={**_HEADERS, **(headers or {})})


def _redirect(url: str, request: Request, *, clear_session: bool = False) -> Response:
    response = RedirectResponse(url, status_code=303, headers=_HEADERS)
    if clear_session:
        _clear(response, request)
    return response


def _clear(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _error_page(request: Request, exc: BrokerError) -> Response:
    metrics.REQUEST_ERRORS.labels(exc.code).inc()
    if exc.status >= 500:
        log.warning("request.upstream_error", code=exc.code, error=type(exc).__name__)
    if exc.status == 401:
        link = '<a href="/admin/login">Log in</a>'
    else:
        link = '<a href="/admin">Back to the portals</a>'
    request_id = REQUEST_ID.get()
    body = (
        f'<main class="narrow"><h1>{_e(exc.title)}</h1>'
        f'<p class="error">{_e(exc.detail)}</p>'
        f"<p>Error code: <code>{_e(exc.code)}</code>"
        + (f" · request id <code>{_e(request_id)}</code>" if request_id else "")
        + f"</p><p>{link}</p></main>"
    )
    response = _page(exc.title, body, exc.status, exc.headers())
    if exc.status == 401:
        _clear(response, request)
    return response


def _pages(endpoint: Endpoint) -> Endpoint:
    """Answer every deliberate error as an HTML page with its status and stable code."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BrokerError as exc:
            return _error_page(request, exc)

    return run


def _login_page(settings: Settings, error: BrokerError | None = None) -> Response:
    problem = (
        f'<p class="error" role="alert">{_e(error.detail)} (<code>{_e(error.code)}</code>)</p>'
        if error
        else ""
    )
    sso = (
        "<p>Sign in with your company account; your groups there decide what you may do. "
        "The session lasts 30 minutes.</p>"
        '<p><a class="button" href="/admin/oidc/login">Sign in with SSO</a></p>'
        if settings.oidc_enabled
        else ""
    )
    keys = (
        f"<p>{'Or, as a break-glass way in, paste' if sso else 'Paste'} a broker caller key "
        "with the <code>portals:admin</code> role. It is checked once and never stored; the "
        "session lasts 30 minutes.</p>"
        '<form method="post" action="/admin/login">'
        '<label for="key">Caller key</label>'
        '<input id="key" name="key" type="password" required autocomplete="off" '
        'spellcheck="false" placeholder="hsb_…">'
        '<p><button class="primary" type="submit">Log in</button></p></form>'
        if settings.key_login_enabled
        else ""
    )
    body = f'<main class="narrow"><h1>Operator login</h1>{problem}{sso}{keys}</main>'
    if error is None:
        return _page("Operator login", body)
    metrics.REQUEST_ERRORS.labels(error.code).inc()
    return _page("Operator login", body, error.status, error.headers())


# --- the portal list -------------------------------------------------------------------------
def _when(value: str | None) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    moment = datetime.fromisoformat(value).astimezone(UTC)
    return f'<time datetime="{_e(value)}">{moment:%Y-%m-%d %H:%M} UTC</time>'


def _expiry(record: PortalRecord, view: dict[str, Any]) -> str:
    if record.access_ct is None or view["access_expires_at"] is None:
        return '<span class="muted">—</span>'
    left = record.remaining()
    relative = f"in {left / 60:.0f} min" if left > 0 else "expired"
    return f'{_when(view["access_expires_at"])}<br><span class="muted">{relative}</span>'


def _hidden(key: PortalKey, operator: Operator) -> str:
    user = (
        "" if key.user_id is None else f'<input type="hidden" name="user_id" value="{key.user_id}">'
    )
    return (
        f'<input type="hidden" name="app" value="{_e(key.app)}">{user}'
        f'<input type="hidden" name="csrf" value="{_e(operator.csrf)}">'
    )


def _actions(record: PortalRecord, operator: Operator) -> str:
    key, state = record.key, record.state
    if state is PortalState.REVOKED:
        return '<span class="muted">—</span>'
    base = f"/admin/portals/{key.hub_id}"
    quarantine = (
        f'<button type="submit" formaction="{base}/quarantine">Quarantine</button>'
        if state in (PortalState.ACTIVE, PortalState.REFRESH_FAILING)
        else ""
    )
    parts = [
        f'<form method="post" action="{base}/revoke">{_hidden(key, operator)}'
        f'<input name="reason" required maxlength="500" placeholder="Reason (required)" '
        f'aria-label="Reason for portal {_e(key)}">{quarantine}'
        '<button type="submit" class="danger">Revoke</button></form>'
    ]
    if state is PortalState.QUARANTINED:
        parts.append(
            f'<form method="post" action="{base}/release">{_hidden(key, operator)}'
            '<button type="submit">Release</button></form>'
        )
    return "".join(parts)


def _row(record: PortalRecord, operator: Operator) -> str:
    view = portal_view(record)  # the operator API's view: never a token or a ciphertext
    user = "" if record.key.user_id is None else f"<br>user {record.key.user_id}"
    user_suffix = "" if record.key.user_id is None else f"-u{record.key.user_id}"
    error = (
        f"<code>{_e(view['last_error'])}</code><br>"
        f'<span class="muted">{view["failure_count"]} failure(s)</span>'
        if view["last_error"]
        else '<span class="muted">—</span>'
    )
    installer = (
        f'<br><span class="muted">{_e(view["installed_by"])}</span>' if view["installed_by"] else ""
    )
    return (
        f'<tr id="portal-{_e(record.key.app)}-{record.key.hub_id}{user_suffix}">'
        f"<td><code>{_e(view['app'])}</code></td>"
        f'<td class="nowrap"><strong>{view["hub_id"]}</strong>{user}</td>'
        f"<td>{_e(view['hub_domain'] or '—')}</td>"
        f'<td><span class="state {_e(view["state"])}">{_e(view["state"])}</span></td>'
        f"<td>{' '.join(f'<code>{_e(s)}</code>' for s in view['scopes']) or '—'}</td>"
        f"<td>{_when(view['installed_at'])}{installer}</td>"
        f"<td>{_when(view['refreshed_at'])}</td>"
        f"<td>{error}</td>"
        f"<td>{_expiry(record, view)}</td>"
        f"<td>{_actions(record, operator)}</td></tr>"
    )


def _flash(done: str | None, portal: str | None) -> str:
    """The message after an action: a fixed sentence per code, naming a well-formed key."""
    if portal is not None and not _PORTAL_TEXT.match(portal):
        raise InvalidRequest("portal must be a portal key like demo/12345")
    if done is None:
        return ""
    if done not in _FLASH:
        raise InvalidRequest(f"done must be one of {', '.join(_FLASH)}")
    label = f"<code>{_e(portal)}</code>" if portal else ""
    return f'<p class="flash" role="status">{_FLASH[done].format(label)}</p>'


@_pages
async def portals_page(request: Request) -> Response:
    svc = services(request)
    reject_unknown(request, frozenset({"state", "done", "portal"}))
    query = request.query_params
    state = query.get("state")
    # Checked before the session, so a malformed link is a 422 whether logged in or not.
    if state is not None and state not in {s.value for s in PortalState}:
        raise InvalidRequest(f"state must be one of {', '.join(PortalState)}")
    flash = _flash(query.get("done"), query.get("portal"))
    operator = await current_operator(request, svc)
    if operator is None:
        return _redirect("/admin/login", request, clear_session=COOKIE in request.cookies)
    records = await svc.admin.list_portals(app=None, state=state, limit=_LIST_LIMIT)
    visible = [r for r in records if operator.caller.may_access(r.key.app, r.key.hub_id)]
    tabs = [("All", "/admin", state is None)] + [
        (s.value.replace("_", " "), f"/admin?state={s.value}", state == s.value)
        for s in PortalState
    ]
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if current else ""}>{_e(label)}</a>'
        for label, href, current in tabs
    )
    rows = "".join(_row(r, operator) for r in visible) or (
        '<tr><td colspan="10" class="muted">No portals.</td></tr>'
    )
    ends = datetime.fromtimestamp(operator.session.expires, UTC)
    more = f" (the first {_LIST_LIMIT})" if len(records) == _LIST_LIMIT else ""
    body = (
        "<header><h1>HubSpot token broker · Portals</h1>"
        f"<span>Signed in as <strong>{_e(operator.caller.name)}</strong> until "
        f"{ends:%H:%M} UTC</span>"
        f'<form method="post" action="/admin/logout"><input type="hidden" name="csrf" '
        f'value="{_e(operator.csrf)}"><button type="submit">Log out</button></form></header>'
        f'<main>{flash}<nav aria-label="Filter by state">{nav}</nav>'
        f"<p>{len(visible)} portal(s){more}. Revoking shreds the stored tokens and asks HubSpot "
        "to revoke the grant; quarantine only stops serving tokens until released.</p>"
        '<div class="scroll"><table><thead><tr><th>App</th><th>Hub ID</th><th>Domain</th>'
        "<th>State</th><th>Scopes</th><th>Installed</th><th>Last refresh</th>"
        "<th>Last error</th><th>Token expires</th><th>Actions</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></main>"
    )
    return _page("Portals", body)


# --- login, logout and the actions -----------------------------------------------------------
@_pages
async def login(request: Request) -> Response:
    reject_unknown(request, frozenset())
    svc = services(request)
    if request.method != "POST":
        return _login_page(svc.settings)
    same_origin(request)
    if not svc.settings.key_login_enabled:
        raise Forbidden(
            "caller-key login is off while single sign-on is configured: sign in with SSO "
            "(BROKER_ADMIN_KEY_LOGIN=true turns it back on)",
            code="key_login_disabled",
        )
    try:
        key = (await _form(request, frozenset({"key"}))).get("key", "").strip()
        if not key:
            raise InvalidRequest("paste a caller key")
        caller = await svc.callers.authenticate(key)
    except (InvalidRequest, Unauthenticated) as exc:
        return _login_page(svc.settings, exc)
    svc.callers.admit(caller)
    if not caller.may(Role.PORTALS_ADMIN):
        raise Forbidden(f"caller {caller.name!r} lacks the portals:admin role")
    now = int(time.time())
    expires = now + SESSION_SECONDS
    if caller.expires_at is not None:
        expires = min(expires, int(caller.expires_at.timestamp()))
    session = Session(caller.id, caller.name, expires, secrets.token_urlsafe(16))
    response = _redirect("/admin", request)
    await start_session(response, request, svc, session, now=now)
    log.info("admin_page.login", caller=caller.name)
    return response


@_pages
async def logout(request: Request) -> Response:
    operator = await require_operator(request, services(request))
    reject_unknown(request, frozenset())
    check_csrf(operator, (await _form(request, frozenset({"csrf"}))).get("csrf"))
    log.info("admin_page.logout", caller=operator.caller.name)
    return _redirect("/admin/login", request, clear_session=True)


async def _action(request: Request, *, reason: bool) -> tuple[Services, Operator, PortalKey, str]:
    """Session, same origin, CSRF, then the portal key and (when wanted) the reason."""
    svc = services(request)
    operator = await require_operator(request, svc)
    reject_unknown(request, frozenset())
    allowed = {"app", "user_id", "csrf"} | ({"reason"} if reason else set())
    fields = await _form(request, frozenset(allowed))
    check_csrf(operator, fields.get("csrf"))
    key = PortalKey(
        parse_app(fields.get("app"), svc.settings.default_app),
        parse_int(request.path_params["hub_id"], "hub_id") or 0,
        parse_int(fields.get("user_id"), "user_id"),
    )
    if not operator.caller.may_access(key.app, key.hub_id):
        raise Forbidden(f"caller {operator.caller.name!r} may not manage portal {key}")
    return svc, operator, key, _reason(fields) if reason else ""


def _done(done: str, key: PortalKey, request: Request) -> Response:
    return _redirect(f"/admin?{urlencode({'done': done, 'portal': str(key)})}", request)


@_pages
async def revoke(request: Request) -> Response:
    svc, operator, key, reason = await _action(request, reason=True)
    done = await svc.operations.revoke(key, reason=reason, actor=operator.caller.name)
    return _done(_REVOKED[done.upstream], key, request)


@_pages
async def quarantine(request: Request) -> Response:
    svc, operator, key, reason = await _action(request, reason=True)
    await svc.operations.quarantine(key, actor=operator.caller.name, reason=reason)
    return _done("quarantined", key, request)


@_pages
async def release(request: Request) -> Response:
    svc, operator, key, _ = await _action(request, reason=False)
    await svc.operations.release(key, actor=operator.caller.name)
    return _done("released", key, request)


routes = [
    Route("/admin", portals_page, methods=["GET"]),
    Route("/admin/login", login, methods=["GET", "POST"]),
    Route("/admin/logout", logout, methods=["POST"]),
    Route("/admin/portals/{hub_id}/revoke", revoke, methods=["POST"]),
    Route("/admin/portals/{hub_id}/quarantine", quarantine, methods=["POST"]),
    Route("/admin/portals/{hub_id}/release", release, methods=["POST"]),
]
