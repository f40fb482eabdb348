"""The operator page under ``/admin``: portals found and paged, one portal and its timeline,
and revoke, quarantine and release, for people who would rather look than type. It calls
the same use cases with the same authorization as the JSON operator API
(``broker.web.admin``); it never shows a token, a ciphertext or a secret.

Security properties:

- **Login** is single sign-on through the OpenID Provider when ``BROKER_OIDC_ISSUER`` is
  set (:mod:`.sso`, :mod:`broker.core.sso`), and otherwise (or with
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
  refused before anything else. An action returns only to a page of ``/admin`` (``back``).
- **Pages** run no script at all: the CSP allows nothing but the stylesheet this broker
  serves (``/admin/static/admin.css``, ``style-src 'self'``; no inline style) and forms to
  this origin; no framing, no referrer to other origins, ``no-store``. Every page is a Jinja2
  template with autoescape on (:mod:`._render`): no value reaches the page unescaped. The
  message after an action is a code from a fixed set plus a portal key, never free text from
  the URL, so a crafted link cannot put words on this page.
- **Scope**: a caller limited to some apps or hubs finds, opens and acts on those only; the
  limit is part of the search query, not a filter after it.

Modules: :mod:`.login` (login, logout), :mod:`.sso` (single sign-on), :mod:`.listing` (the
list), :mod:`.portal` (one portal and its timeline), :mod:`.actions` (the POSTs),
:mod:`._query` (GET parameters), :mod:`._views` (what templates see of a portal),
:mod:`._render` (templates, headers, errors).
"""

from __future__ import annotations

from starlette.routing import Route

from broker.web.admin_page._render import CSP, STYLESHEET, stylesheet
from broker.web.admin_page.actions import quarantine, release, revoke
from broker.web.admin_page.listing import portals_page
from broker.web.admin_page.login import login, logout
from broker.web.admin_page.portal import portal_page
from broker.web.admin_page.sso import CALLBACK_PATH, FLOW_COOKIE, callback
from broker.web.admin_page.sso import login as sso_login
from broker.web.admin_session import COOKIE

__all__ = ["COOKIE", "CSP", "FLOW_COOKIE", "routes"]

routes = [
    Route("/admin", portals_page, methods=["GET"]),
    Route(STYLESHEET, stylesheet, methods=["GET"]),
    Route("/admin/login", login, methods=["GET", "POST"]),
    Route("/admin/logout", logout, methods=["POST"]),
    Route("/admin/oidc/login", sso_login, methods=["GET"]),
    Route(CALLBACK_PATH, callback, methods=["GET"]),
    Route("/admin/portals/{hub_id}", portal_page, methods=["GET"]),
    Route("/admin/portals/{hub_id}/revoke", revoke, methods=["POST"]),
    Route("/admin/portals/{hub_id}/quarantine", quarantine, methods=["POST"]),
    Route("/admin/portals/{hub_id}/release", release, methods=["POST"]),
]
