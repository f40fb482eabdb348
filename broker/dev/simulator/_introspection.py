"""HubSpot's OAuth server, part two: introspection, revocation and the v1 lookups.

Same conventions as `_oauth`: the caller holds the lock; each function counts the call
and applies injected faults first (``Store.arrive``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from broker.dev.simulator._model import Grant
from broker.dev.simulator._replies import Reply, api_error, oauth_error
from broker.dev.simulator._store import Store

Form = Mapping[str, str]
_FORM_MESSAGE = "send client_id, client_secret and token as application/x-www-form-urlencoded"


def _identity(store: Store, grant: Grant) -> dict[str, object]:
    portal = store.portals[grant.hub_id]
    return {
        "hub_id": grant.hub_id,
        "user_id": grant.user_id,
        "client_id": grant.client_id,
        "app_id": store.apps[grant.client_id].app_id,
        "user": portal.users.get(grant.user_id, ""),
        "hub_domain": portal.hub_domain,
        "scopes": list(grant.scopes),
    }


def introspect(store: Store, form: Form | None) -> Reply:
    """`POST /oauth/{version}/token/introspect`: live tokens of the calling app only."""
    given = (form or {}).get("token", "")
    store.arrive("introspect", given)
    if form is None or not given:
        return oauth_error("invalid_request", "BAD_REQUEST", message=_FORM_MESSAGE)
    app = store.authenticate_client(form)
    access = store.live_access_token(given)
    if access is not None and access.grant.client_id == app.client_id:
        now = store.now()
        body = {"active": True, "token": given, **_identity(store, access.grant)}
        body |= {
            "expires_in": int(access.expires_at - now),
            "is_private_distribution": False,
            "signed_access_token": {
                "expiresAt": int(access.expires_at * 1000),
                "hubId": access.grant.hub_id,
                "userId": access.grant.user_id,
                "appId": store.apps[app.client_id].app_id,
                "scopes": " ".join(access.grant.scopes),
                "hublet": "na1",
                "isUserLevel": False,
                "isPrivateDistribution": False,
                "signature": secrets.token_hex(20),
            },
            "token_use": "access_token",
            "token_type": "Bearer",
        }
        return Reply(200, json=body)
    refresh = store.live_refresh_token(given)
    if refresh is not None and refresh.grant.client_id == app.client_id:
        body = {"active": True, "token": given, **_identity(store, refresh.grant)}
        body |= {"token_use": "refresh_token", "token_type": "Bearer"}
        return Reply(200, json=body)
    return Reply(200, json={"active": False})


def revoke(store: Store, form: Form | None) -> Reply:
    """`POST /oauth/{version}/token/revoke`: 200 whether or not the token was known."""
    given = (form or {}).get("token", "")
    store.arrive("revoke", given)
    if form is None:
        return oauth_error("invalid_request", "BAD_REQUEST", message=_FORM_MESSAGE)
    app = store.authenticate_client(form)
    # Revoking a refresh token leaves the access tokens minted from it alive until expiry.
    for record in (store.refresh_tokens.get(given), store.access_tokens.get(given)):
        if record is not None and record.grant.client_id == app.client_id:
            record.alive = False
    return Reply(200)


def v1_access_token(store: Store, given: str) -> Reply:
    store.arrive("introspect", given)
    record = store.live_access_token(given)
    if record is None:
        return api_error(404, "OBJECT_NOT_FOUND", "access token not found or expired")
    body = {"token": given, **_identity(store, record.grant)}
    del body["client_id"]
    body |= {"expires_in": int(record.expires_at - store.now()), "token_type": "access"}
    return Reply(200, json=body)


def v1_refresh_token(store: Store, given: str) -> Reply:
    store.arrive("introspect", given)
    record = store.live_refresh_token(given)
    if record is None:
        return api_error(404, "OBJECT_NOT_FOUND", "refresh token not found")
    body = {"token": given, **_identity(store, record.grant)}
    del body["app_id"]
    body["token_type"] = "refresh"
    return Reply(200, json=body)


def v1_delete_refresh_token(store: Store, given: str) -> Reply:
    store.arrive("revoke", given)
    record = store.refresh_tokens.get(given)
    if record is not None:
        record.alive = False
    return Reply(204)
