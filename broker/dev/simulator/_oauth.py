"""HubSpot's OAuth server, part one: the authorize step and the token endpoint.

Each function takes the `Store` (its caller holds the lock), counts the call, applies
injected faults, and returns a `Reply` or raises `HubSpotError` with one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from urllib.parse import urlencode

from broker.dev.simulator import _pages
from broker.dev.simulator._model import AuthCode, Grant, PendingConsent, new_code, new_portal
from broker.dev.simulator._replies import HubSpotError, Reply, oauth_error
from broker.dev.simulator._store import Store

Form = Mapping[str, str]
GRANT_TYPES = ("authorization_code", "refresh_token")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


def _page_error(message: str) -> HubSpotError:
    return HubSpotError(Reply(400, html=_pages.authorize_error(message)))


def _redirect(redirect_uri: str, **params: str | None) -> Reply:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in redirect_uri else "?"
    return Reply(302, headers={"Location": f"{redirect_uri}{separator}{query}"})


def _default_hub(store: Store) -> int | None:
    if store.settings.consent_hub_id is not None:
        return store.settings.consent_hub_id
    return next(iter(store.portals), None)


def authorize(store: Store, params: Form) -> Reply:
    store.count("authorize")
    store.check_faults("authorize", hub_id=_default_hub(store))
    request = _parse_authorize(store, params)
    consent_hub_id = store.settings.consent_hub_id
    if consent_hub_id is not None and consent_hub_id not in store.portals:
        # Convenience: naming a hub for consent is enough to have it exist.
        store.portals[consent_hub_id] = new_portal(consent_hub_id)
    if not store.portals:
        raise _page_error("No HubSpot account to install this app into.")
    if store.settings.consent == "auto":
        return _approve(store, request, _default_hub(store))
    request_id = secrets.token_urlsafe(16)
    store.pending[request_id] = request
    page = _pages.consent(
        request_id=request_id,
        app_name=f"app {store.apps[request.client_id].app_id}",
        scopes=request.required + request.optional,
        portals=[(p.hub_id, p.hub_domain) for p in store.portals.values()],
        selected_hub_id=_default_hub(store),
    )
    return Reply(200, html=page, headers={"Cache-Control": "no-store"})


def _parse_authorize(store: Store, params: Form) -> PendingConsent:
    app = store.apps.get(params.get("client_id", ""))
    if app is None:
        raise _page_error("Unknown client_id: this app does not exist.")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in app.redirect_uris:
        raise _page_error("The redirect_uri does not match any redirect URL of this app.")
    required = tuple(dict.fromkeys(params.get("scope", "").split()))
    optional = tuple(s for s in dict.fromkeys(params.get("optional_scope", "").split()))
    if not required:
        raise _page_error("The scope parameter is required.")
    configured = set(app.scopes) | set(app.optional_scopes)
    unknown = [s for s in required + optional if s not in configured]
    if unknown:
        raise _page_error(f"Scopes not configured for this app: {' '.join(unknown)}")
    missing = [s for s in app.scopes if s not in required]
    if missing:
        raise _page_error(f"The scope parameter misses required scopes: {' '.join(missing)}")
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if not store.settings.pkce:
        challenge = None  # a server without PKCE ignores both parameters
    elif challenge is not None or method is not None:
        if method != "S256":
            raise _page_error("code_challenge_method must be S256.")
        if challenge is None or not _S256_CHALLENGE.fullmatch(challenge):
            raise _page_error("code_challenge must be 43 base64url characters.")
    return PendingConsent(
        client_id=app.client_id,
        redirect_uri=redirect_uri,
        state=params.get("state"),
        required=required,
        optional=tuple(s for s in optional if s not in required),
        code_challenge=challenge,
        expires_at=store.now() + store.settings.code_ttl,
    )


def _approve(store: Store, request: PendingConsent, hub_id: int | None) -> Reply:
    portal = None if hub_id is None else store.portals.get(hub_id)
    if portal is None:
        raise _page_error("No HubSpot account to install this app into.")
    user_id = store.settings.consent_user_id
    if user_id is None:
        user_id = next(iter(portal.users))
    elif user_id not in portal.users:
        raise _page_error(f"User {user_id} is not a member of account {portal.hub_id}.")
    available = portal.scopes
    if available is not None:
        lacking = [s for s in request.required if s not in available]
        if lacking:
            raise _page_error(f"This account does not have access to: {' '.join(lacking)}")
    granted = request.required + tuple(
        s for s in request.optional if available is None or s in available
    )
    code = new_code()
    store.codes[code] = AuthCode(
        Grant(request.client_id, portal.hub_id, user_id, granted),
        redirect_uri=request.redirect_uri,
        code_challenge=request.code_challenge,
        expires_at=store.now() + store.settings.code_ttl,
    )
    return _redirect(request.redirect_uri, code=code, state=request.state)


def decide(store: Store, form: Form) -> Reply:
    """The consent page's Connect / Deny buttons."""
    store.count("authorize.decision")
    request = store.pending.pop(form.get("request_id", ""), None)
    if request is None or store.now() >= request.expires_at:
        raise _page_error("This install request is unknown or has expired; start again.")
    decision = form.get("decision")
    if decision == "deny":
        return _redirect(
            request.redirect_uri,
            error="access_denied",
            error_description="The user denied the app access to their account.",
            state=request.state,
        )
    if decision != "connect":
        raise _page_error("Choose Connect or Deny.")
    hub_id = form.get("hub_id", "")
    return _approve(store, request, int(hub_id) if hub_id.isdigit() else _default_hub(store))


def token(store: Store, form: Form | None) -> Reply:
    """`POST /oauth/{version}/token`; `form` is None when the body was not a form."""
    grant_type = (form or {}).get("grant_type")
    kind = grant_type if grant_type in GRANT_TYPES else "other"
    store.count("token")
    store.count(f"token.{kind}")
    secret_field = {"authorization_code": "code", "refresh_token": "refresh_token"}.get(kind)
    hub_id = store.hub_of(form.get(secret_field, "")) if form and secret_field else None
    if kind == "refresh_token" and hub_id is not None:
        store.refreshes_by_hub[hub_id] += 1
    store.check_faults("token", hub_id=hub_id, grant_type=grant_type)
    if form is not None:
        store.check_token_rate(form.get("client_id", ""))
    if form is None:
        message = "missing or unknown grant type: send application/x-www-form-urlencoded"
        return oauth_error("invalid_request", "BAD_GRANT_TYPE", message=message)
    if kind == "other":
        error = "unsupported_grant_type" if grant_type else "invalid_request"
        return oauth_error(error, "BAD_GRANT_TYPE")
    app = store.authenticate_client(form)
    if kind == "authorization_code":
        return _exchange_code(store, app.client_id, form)
    return _refresh(store, app.client_id, form)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _exchange_code(store: Store, client_id: str, form: Form) -> Reply:
    code = store.codes.get(form.get("code", ""))
    if code is None or code.used or code.grant.client_id != client_id:
        raise HubSpotError(oauth_error("invalid_grant", "BAD_AUTH_CODE"))
    if store.now() >= code.expires_at:
        raise HubSpotError(oauth_error("invalid_grant", "EXPIRED_AUTH_CODE"))
    if form.get("redirect_uri") != code.redirect_uri:
        raise HubSpotError(oauth_error("invalid_grant", "MISMATCH_REDIRECT_URI_AUTH_CODE"))
    if code.code_challenge is not None:
        verifier = form.get("code_verifier", "")
        if not hmac.compare_digest(_s256(verifier), code.code_challenge):
            raise HubSpotError(oauth_error("invalid_grant", "BAD_CODE_VERIFIER"))
    if code.grant.hub_id not in store.portals:
        raise HubSpotError(_bad_hub(store))
    code.used = True
    return store.issue(code.grant, store.new_refresh_token(code.grant))


def _refresh(store: Store, client_id: str, form: Form) -> Reply:
    given = form.get("refresh_token", "")
    record = store.refresh_tokens.get(given)
    if record is None or not record.alive or record.grant.client_id != client_id:
        raise HubSpotError(oauth_error("invalid_grant", "BAD_REFRESH_TOKEN"))
    if record.grant.hub_id not in store.portals:
        raise HubSpotError(_bad_hub(store))
    if not store.settings.rotate_refresh_tokens:
        return store.issue(record.grant, given)
    # Rotation: the old refresh token stops working the moment the new one is issued.
    record.alive = False
    return store.issue(record.grant, store.new_refresh_token(record.grant))


def _bad_hub(store: Store) -> Reply:
    return oauth_error("access_denied", "BAD_HUB", http=store.settings.bad_hub_status)
