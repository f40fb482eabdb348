"""The HubSpot simulator, over real HTTP on loopback, against hubspot-oauth.md.

One server serves the whole module; every test resets the simulator and starts from one
app (two client secrets) and one portal.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hubspot import HubSpot
from hubspot.oauth import ApiException
from hubspot.utils.oauth import get_auth_url

from broker.dev.simulator import Simulator, run_in_thread

CLIENT_ID = "sim-client-id"
SECRET = "sim-secret-new"
OLD_SECRET = "sim-secret-old"
REDIRECT = "http://localhost:8080/oauth/callback"
HUB = 4242
OTHER_HUB = 777
SCOPES = ["oauth", "crm.objects.contacts.read"]
CODE_SHAPE = re.compile(r"na1-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ERROR_KEYS = {"error", "error_description", "status", "message", "correlationId"}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator()
    with run_in_thread(sim) as base_url:
        yield sim, base_url


@pytest.fixture
def sim(server: tuple[Simulator, str]) -> Simulator:
    sim = server[0]
    sim.reset()
    sim.add_app(CLIENT_ID, [SECRET, OLD_SECRET], [REDIRECT], SCOPES)
    sim.add_portal(HUB)
    return sim


@pytest.fixture
def base_url(server: tuple[Simulator, str], sim: Simulator) -> str:
    return server[1]


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=5) as client:
        yield client


def pkce() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(b"a verifier of enough entropy for tests!!").decode()
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(http: httpx.Client, **overrides: str) -> httpx.Response:
    params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "scope": " ".join(SCOPES)}
    params["state"] = "the-state"
    params.update(overrides)
    return http.get("/oauth/authorize", params={k: v for k, v in params.items() if v})


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def token(http: httpx.Client, version: str = "2026-03", **form: str) -> httpx.Response:
    body = {"client_id": CLIENT_ID, "client_secret": SECRET} | form
    return http.post(f"/oauth/{version}/token", data=body)


def exchange(http: httpx.Client, code: str, **extra: str) -> httpx.Response:
    return token(http, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, **extra)


def refresh(http: httpx.Client, refresh_token: str, **extra: str) -> httpx.Response:
    return token(http, grant_type="refresh_token", refresh_token=refresh_token, **extra)


def install(http: httpx.Client) -> dict[str, Any]:
    verifier, challenge = pkce()
    code = redirect_params(authorize(http, code_challenge=challenge, code_challenge_method="S256"))[
        "code"
    ]
    response = exchange(http, code, code_verifier=verifier)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def introspect(http: httpx.Client, value: str, version: str = "2026-03") -> httpx.Response:
    form = {"client_id": CLIENT_ID, "client_secret": SECRET, "token": value}
    return http.post(f"/oauth/{version}/token/introspect", data=form)


def contacts(http: httpx.Client, access_token: str) -> httpx.Response:
    return http.get("/crm/v3/objects/contacts", headers={"Authorization": f"Bearer {access_token}"})


def assert_oauth_error(response: httpx.Response, http_status: int, error: str, status: str) -> None:
    assert response.status_code == http_status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert (body["error"], body["status"]) == (error, status)
    assert body["message"] == body["error_description"] != ""


# -- the install dance ---------------------------------------------------------------------


def test_install_dance_from_authorize_to_a_crm_call(sim: Simulator, http: httpx.Client) -> None:
    verifier, challenge = pkce()
    params = redirect_params(
        authorize(http, code_challenge=challenge, code_challenge_method="S256")
    )
    assert params["state"] == "the-state"
    assert CODE_SHAPE.fullmatch(params["code"])

    response = exchange(http, params["code"], code_verifier=verifier)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    tokens = response.json()
    assert len(tokens["access_token"]) >= 512
    assert CODE_SHAPE.fullmatch(tokens["refresh_token"])
    assert {k: v for k, v in tokens.items() if k not in ("access_token", "refresh_token")} == {
        "expires_in": 1800,
        "token_type": "bearer",
        "token_use": "access_token",
        "hub_id": HUB,
        "scopes": SCOPES,
        "user_id": 1_000_001,
    }

    refreshed = refresh(http, tokens["refresh_token"]).json()
    assert refreshed["refresh_token"] == tokens["refresh_token"]  # no rotation by default
    assert refreshed["access_token"] != tokens["access_token"]

    info = introspect(http, refreshed["access_token"]).json()
    assert info["active"] is True
    assert info["token_use"] == "access_token"
    assert info["token_type"] == "Bearer"
    assert (info["hub_id"], info["client_id"], info["scopes"]) == (HUB, CLIENT_ID, SCOPES)
    assert 1790 <= info["expires_in"] <= 1800
    assert info["signed_access_token"]["hubId"] == HUB
    refresh_info = introspect(http, tokens["refresh_token"]).json()
    assert refresh_info["token_use"] == "refresh_token"
    assert "expires_in" not in refresh_info

    crm = contacts(http, refreshed["access_token"])
    assert crm.status_code == 200
    assert crm.headers["X-HubSpot-RateLimit-Max"] == "110"
    first = crm.json()["results"][0]
    assert set(first) == {"id", "properties", "createdAt", "updatedAt", "archived"}
    assert crm.json()["paging"]["next"]["after"] == "10"
    counts = sim.counters()
    assert (counts["authorize"], counts["token.authorization_code"]) == (1, 1)
    assert (counts["token.refresh_token"], counts["introspect"], counts["contacts"]) == (1, 2, 1)
    assert sim.refreshes_by_hub() == {HUB: 1}


@pytest.mark.parametrize("version", ["2026-03", "2026-09", "v3", "v1"])
def test_every_token_endpoint_version_refreshes(http: httpx.Client, version: str) -> None:
    tokens = install(http)
    response = refresh(http, tokens["refresh_token"], version=version)
    assert response.status_code == 200
    assert response.json()["hub_id"] == HUB


@pytest.mark.parametrize("version", ["2026-03", "2026-09", "v3"])
def test_every_introspection_version_answers(http: httpx.Client, version: str) -> None:
    tokens = install(http)
    assert introspect(http, tokens["access_token"], version).json()["active"] is True
    form = {"client_id": CLIENT_ID, "client_secret": SECRET, "token": tokens["refresh_token"]}
    assert http.post(f"/oauth/{version}/token/revoke", data=form).status_code == 200
    assert introspect(http, tokens["refresh_token"], version).json() == {"active": False}


def test_both_listed_client_secrets_are_accepted(http: httpx.Client) -> None:
    tokens = install(http)
    assert refresh(http, tokens["refresh_token"], client_secret=OLD_SECRET).status_code == 200
    assert refresh(http, tokens["refresh_token"], client_secret=SECRET).status_code == 200


# -- every error row of the token endpoint -------------------------------------------------


def test_unknown_and_reused_codes_are_bad_auth_code(http: httpx.Client) -> None:
    assert_oauth_error(
        exchange(http, "na1-0000-0000-0000-0000-000000000000"),
        400,
        "invalid_grant",
        "BAD_AUTH_CODE",
    )
    code = redirect_params(authorize(http))["code"]
    assert exchange(http, code).status_code == 200
    assert_oauth_error(exchange(http, code), 400, "invalid_grant", "BAD_AUTH_CODE")


def test_codes_expire_after_code_ttl(sim: Simulator, http: httpx.Client) -> None:
    sim.configure(code_ttl=60)
    fresh = redirect_params(authorize(http))["code"]
    stale = redirect_params(authorize(http))["code"]
    sim.advance_clock(59)
    assert exchange(http, fresh).status_code == 200
    sim.advance_clock(1)
    assert_oauth_error(exchange(http, stale), 400, "invalid_grant", "EXPIRED_AUTH_CODE")


def test_code_is_bound_to_its_redirect_uri(sim: Simulator, http: httpx.Client) -> None:
    other = "http://localhost:8080/other"
    sim.add_app(CLIENT_ID, [SECRET], [REDIRECT, other], SCOPES)
    code = redirect_params(authorize(http))["code"]
    response = token(http, grant_type="authorization_code", code=code, redirect_uri=other)
    assert_oauth_error(response, 400, "invalid_grant", "MISMATCH_REDIRECT_URI_AUTH_CODE")
    assert exchange(http, code).status_code == 200  # a failed attempt does not burn the code


def test_code_is_bound_to_its_client(sim: Simulator, http: httpx.Client) -> None:
    sim.add_app("another-app", ["another-secret"], [REDIRECT], SCOPES)
    code = redirect_params(authorize(http))["code"]
    response = exchange(http, code, client_id="another-app", client_secret="another-secret")
    assert_oauth_error(response, 400, "invalid_grant", "BAD_AUTH_CODE")


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"client_id": "nobody"}, "BAD_CLIENT_ID"),
        ({"client_id": ""}, "BAD_CLIENT_ID"),
        ({"client_secret": "wrong"}, "BAD_CLIENT_SECRET"),
        ({"client_secret": ""}, "BAD_CLIENT_SECRET"),
    ],
)
def test_wrong_client_credentials_are_invalid_client(
    http: httpx.Client, form: dict[str, str], status: str
) -> None:
    tokens = install(http)
    assert_oauth_error(
        refresh(http, tokens["refresh_token"], **form), 400, "invalid_client", status
    )
    code = redirect_params(authorize(http))["code"]
    assert_oauth_error(exchange(http, code, **form), 400, "invalid_client", status)


@pytest.mark.parametrize("verifier", ["", "not-the-verifier-that-made-the-challenge-at-all"])
def test_pkce_verifier_must_match_the_challenge(http: httpx.Client, verifier: str) -> None:
    _, challenge = pkce()
    code = redirect_params(authorize(http, code_challenge=challenge, code_challenge_method="S256"))[
        "code"
    ]
    form = {"code_verifier": verifier} if verifier else {}
    assert_oauth_error(exchange(http, code, **form), 400, "invalid_grant", "BAD_CODE_VERIFIER")


def test_bad_refresh_tokens_are_invalid_grant(sim: Simulator, http: httpx.Client) -> None:
    sim.add_app("another-app", ["another-secret"], [REDIRECT], SCOPES)
    tokens = install(http)
    for response in (
        refresh(http, "na1-dead-beef-dead-beef-deadbeefdead"),
        refresh(http, ""),
        refresh(
            http, tokens["refresh_token"], client_id="another-app", client_secret="another-secret"
        ),
    ):
        assert_oauth_error(response, 400, "invalid_grant", "BAD_REFRESH_TOKEN")
    assert sim.kill_grant(HUB) == 2  # the refresh token and its access token
    assert_oauth_error(
        refresh(http, tokens["refresh_token"]), 400, "invalid_grant", "BAD_REFRESH_TOKEN"
    )
    assert not sim.is_refresh_token_valid(tokens["refresh_token"])


@pytest.mark.parametrize("http_status", [400, 403])
def test_deleted_portal_is_bad_hub(sim: Simulator, http: httpx.Client, http_status: int) -> None:
    sim.configure(bad_hub_status=http_status)
    tokens = install(http)
    sim.remove_portal(HUB)
    assert_oauth_error(
        refresh(http, tokens["refresh_token"]), http_status, "access_denied", "BAD_HUB"
    )
    assert contacts(http, tokens["access_token"]).status_code == 401


@pytest.mark.parametrize(
    ("grant_type", "error"),
    [(None, "invalid_request"), ("client_credentials", "unsupported_grant_type")],
)
def test_missing_or_unknown_grant_type(
    sim: Simulator, http: httpx.Client, grant_type: str | None, error: str
) -> None:
    form = {} if grant_type is None else {"grant_type": grant_type}
    assert_oauth_error(token(http, **form), 400, error, "BAD_GRANT_TYPE")
    assert sim.counters()["token.other"] == 1


def test_token_endpoint_takes_only_form_bodies(http: httpx.Client) -> None:
    tokens = install(http)
    body = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    response = http.post("/oauth/2026-03/token", json=body)
    assert_oauth_error(response, 400, "invalid_request", "BAD_GRANT_TYPE")
    assert http.post("/oauth/2026-03/token", data=body).status_code == 200


# -- refresh token rotation ----------------------------------------------------------------


def test_without_rotation_the_refresh_token_stays_and_access_tokens_overlap(
    sim: Simulator, http: httpx.Client
) -> None:
    tokens = install(http)
    again = refresh(http, tokens["refresh_token"]).json()
    third = refresh(http, tokens["refresh_token"]).json()
    assert again["refresh_token"] == third["refresh_token"] == tokens["refresh_token"]
    for access_token in (tokens["access_token"], again["access_token"], third["access_token"]):
        assert contacts(http, access_token).status_code == 200
    assert sim.is_refresh_token_valid(tokens["refresh_token"])


def test_with_rotation_each_refresh_kills_the_previous_token(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.configure(rotate_refresh_tokens=True)
    tokens = install(http)
    rotated = refresh(http, tokens["refresh_token"]).json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert CODE_SHAPE.fullmatch(rotated["refresh_token"])
    assert_oauth_error(
        refresh(http, tokens["refresh_token"]), 400, "invalid_grant", "BAD_REFRESH_TOKEN"
    )
    assert refresh(http, rotated["refresh_token"]).status_code == 200
    assert contacts(http, tokens["access_token"]).status_code == 200  # lives until expiry
    assert sim.counters()["token.refresh_token"] == 3


def test_concurrent_refreshes_with_rotation_let_exactly_one_win(
    sim: Simulator, base_url: str, http: httpx.Client
) -> None:
    sim.configure(rotate_refresh_tokens=True)
    refresh_token = install(http)["refresh_token"]
    statuses: list[int] = []

    def race() -> None:
        with httpx.Client(base_url=base_url) as client:
            statuses.append(refresh(client, refresh_token).status_code)

    threads = [threading.Thread(target=race) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [400] * 11
    assert sim.refreshes_by_hub() == {HUB: 12}


# -- access tokens, the CRM endpoint, uninstall ------------------------------------------


def test_access_tokens_expire_on_the_simulated_clock(sim: Simulator, http: httpx.Client) -> None:
    sim.configure(access_token_ttl=300)
    tokens = install(http)
    assert tokens["expires_in"] == 300
    info = sim.access_token_info(tokens["access_token"])
    assert info is not None
    assert info.active
    assert info.hub_id == HUB
    sim.advance_clock(312.5)
    response = contacts(http, tokens["access_token"])
    assert response.status_code == 401
    body = response.json()
    assert body["category"] == "EXPIRED_AUTHENTICATION"
    assert body["message"] == "The OAuth token used to make this call expired 12 second(s) ago."
    assert body["status"] == "error"
    assert body["correlationId"]
    assert introspect(http, tokens["access_token"]).json() == {"active": False}
    assert http.get(f"/oauth/v1/access-tokens/{tokens['access_token']}").status_code == 404
    expired = sim.access_token_info(tokens["access_token"])
    assert expired is not None
    assert not expired.active
    assert expired.expires_in == -12
    assert sim.access_token_info("CO-unknown") is None


def test_crm_call_with_unknown_token_is_invalid_authentication(http: httpx.Client) -> None:
    for headers in ({"Authorization": "Bearer CO-not-a-token"}, {}):
        response = http.get("/crm/v3/objects/contacts", headers=headers)
        assert response.status_code == 401
        assert response.json()["category"] == "INVALID_AUTHENTICATION"


def test_crm_call_without_contacts_scope_is_missing_scopes(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_app(CLIENT_ID, [SECRET], [REDIRECT], ["oauth"])
    code = redirect_params(authorize(http, scope="oauth"))["code"]
    access_token = exchange(http, code).json()["access_token"]
    response = contacts(http, access_token)
    assert response.status_code == 403
    assert response.json()["category"] == "MISSING_SCOPES"


def test_crm_paging_and_properties(http: httpx.Client) -> None:
    access_token = install(http)["access_token"]
    headers = {"Authorization": f"Bearer {access_token}"}
    params = {"limit": "20", "after": "20", "properties": "email"}
    page = http.get("/crm/v3/objects/contacts", headers=headers, params=params).json()
    assert len(page["results"]) == 5
    assert "paging" not in page  # last page
    assert set(page["results"][0]["properties"]) == {
        "email",
        "createdate",
        "hs_object_id",
        "lastmodifieddate",
    }
    bad = http.get("/crm/v3/objects/contacts", headers=headers, params={"limit": "0"})
    assert bad.status_code == 400


def test_crm_rate_limit_is_110_per_10_seconds_per_portal(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_portal(OTHER_HUB)
    access_token = install(http)["access_token"]
    other = sim.issue_code(CLIENT_ID, REDIRECT, OTHER_HUB)
    other_access_token = exchange(http, other).json()["access_token"]
    remaining = [
        contacts(http, access_token).headers["X-HubSpot-RateLimit-Remaining"] for _ in range(110)
    ]
    assert remaining[0] == "109"
    assert remaining[-1] == "0"
    limited = contacts(http, access_token)
    assert limited.status_code == 429
    assert limited.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert limited.json()["errorType"] == "RATE_LIMIT"
    assert limited.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert limited.headers["X-HubSpot-RateLimit-Max"] == "110"
    assert contacts(http, other_access_token).status_code == 200  # per portal
    sim.advance_clock(10)
    assert contacts(http, access_token).status_code == 200


def test_crm_daily_limit_per_portal_set_by_the_control_api(
    sim: Simulator, http: httpx.Client
) -> None:
    access_token = install(http)["access_token"]
    assert "X-HubSpot-RateLimit-Daily" not in contacts(http, access_token).headers
    assert http.post("/_sim/config", json={"api_daily_limit": 0}).status_code == 400
    assert http.post("/_sim/config", json={"api_daily_limit": 3}).json()["api_daily_limit"] == 3
    first = contacts(http, access_token)
    assert first.headers["X-HubSpot-RateLimit-Daily"] == "3"
    assert first.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "2"
    assert contacts(http, access_token).status_code == 200
    assert contacts(http, access_token).headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    limited = contacts(http, access_token)
    assert limited.status_code == 429
    assert limited.json()["policyName"] == "DAILY"
    assert limited.json()["errorType"] == "RATE_LIMIT"
    assert limited.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    assert sim.counters()["contacts.rate_limited"] == 1
    assert http.post("/_sim/config", json={"api_daily_limit": None}).status_code == 200
    assert contacts(http, access_token).status_code == 200


def test_uninstall_kills_the_portals_grant(sim: Simulator, http: httpx.Client) -> None:
    tokens = install(http)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert http.delete("/appinstalls/2026-03/external-install", headers=headers).status_code == 204
    assert not sim.is_refresh_token_valid(tokens["refresh_token"])
    assert_oauth_error(
        refresh(http, tokens["refresh_token"]), 400, "invalid_grant", "BAD_REFRESH_TOKEN"
    )
    assert http.delete("/appinstalls/2026-03/external-install", headers=headers).status_code == 401
    assert sim.counters()["uninstall"] == 2


# -- revocation and the v1 lookups ---------------------------------------------------------


def test_revoking_a_refresh_token_leaves_its_access_tokens_alive(
    sim: Simulator, http: httpx.Client
) -> None:
    tokens = install(http)
    form = {"client_id": CLIENT_ID, "client_secret": SECRET, "token": tokens["refresh_token"]}
    form["token_type_hint"] = "refresh_token"
    assert http.post("/oauth/2026-03/token/revoke", data=form).status_code == 200
    assert_oauth_error(
        refresh(http, tokens["refresh_token"]), 400, "invalid_grant", "BAD_REFRESH_TOKEN"
    )
    assert contacts(http, tokens["access_token"]).status_code == 200
    form["token"] = "na1-0000-0000-0000-0000-000000000000"
    assert http.post("/oauth/2026-03/token/revoke", data=form).status_code == 200
    assert sim.counters()["revoke"] == 2


def test_revoke_and_introspect_authenticate_the_client(http: httpx.Client) -> None:
    tokens = install(http)
    form = {"client_id": CLIENT_ID, "client_secret": "wrong", "token": tokens["refresh_token"]}
    response = http.post("/oauth/2026-03/token/revoke", data=form)
    assert_oauth_error(response, 400, "invalid_client", "BAD_CLIENT_SECRET")
    response = http.post("/oauth/2026-03/token/introspect", data=form)
    assert_oauth_error(response, 400, "invalid_client", "BAD_CLIENT_SECRET")
    assert introspect(http, tokens["refresh_token"]).json()["active"] is True


def test_v1_lookups_and_delete(sim: Simulator, http: httpx.Client) -> None:
    tokens = install(http)
    access = http.get(f"/oauth/v1/access-tokens/{tokens['access_token']}").json()
    assert access["token_type"] == "access"
    assert (access["hub_id"], access["user"], access["hub_domain"]) == (
        HUB,
        "dev@example.com",
        f"hub-{HUB}.example.com",
    )
    assert "client_id" not in access
    assert isinstance(access["app_id"], int)
    refresh_info = http.get(f"/oauth/v1/refresh-tokens/{tokens['refresh_token']}").json()
    assert (refresh_info["token_type"], refresh_info["client_id"]) == ("refresh", CLIENT_ID)
    assert http.delete(f"/oauth/v1/refresh-tokens/{tokens['refresh_token']}").status_code == 204
    missing = http.get(f"/oauth/v1/refresh-tokens/{tokens['refresh_token']}")
    assert missing.status_code == 404
    assert {"status", "message", "correlationId", "category"} <= set(missing.json())
    assert not sim.is_refresh_token_valid(tokens["refresh_token"])


# -- the authorize step ------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "nobody"},
        {"redirect_uri": "http://localhost:8080/oauth/callback/"},
        {"redirect_uri": ""},
        {"scope": "oauth"},
        {"scope": ""},
        {"scope": "oauth crm.objects.contacts.read crm.objects.deals.write"},
        {"code_challenge": "too-short", "code_challenge_method": "S256"},
        {"code_challenge": "x" * 43, "code_challenge_method": "plain"},
    ],
)
def test_authorize_failures_are_html_pages_not_redirects(
    sim: Simulator, http: httpx.Client, overrides: dict[str, str]
) -> None:
    response = authorize(http, **overrides)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert sim.counters()["authorize"] == 1


def test_optional_scopes_are_granted_only_where_the_portal_has_them(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_app(CLIENT_ID, [SECRET], [REDIRECT], SCOPES, ["crm.objects.deals.read"])
    sim.add_portal(OTHER_HUB, scopes=SCOPES)
    granted = {}
    for hub_id in (HUB, OTHER_HUB):
        sim.configure(consent_hub_id=hub_id)
        code = redirect_params(authorize(http, optional_scope="crm.objects.deals.read"))["code"]
        granted[hub_id] = exchange(http, code).json()["scopes"]
    assert granted == {HUB: [*SCOPES, "crm.objects.deals.read"], OTHER_HUB: SCOPES}


def test_portal_without_a_required_scope_cannot_install(sim: Simulator, http: httpx.Client) -> None:
    sim.add_portal(HUB, scopes=["oauth"])
    assert authorize(http).status_code == 400


def test_consent_hub_id_names_the_portal_to_install_into(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.configure(consent_hub_id=9001)  # never added: naming it is enough
    tokens = exchange(http, redirect_params(authorize(http))["code"]).json()
    assert tokens["hub_id"] == 9001
    assert introspect(http, tokens["access_token"]).json()["hub_domain"] == "hub-9001.example.com"


def test_consent_page_connect_and_deny(sim: Simulator, http: httpx.Client) -> None:
    sim.add_portal(OTHER_HUB)
    sim.add_user(OTHER_HUB, "second@example.com", 55)
    sim.configure(consent="page", consent_user_id=55)
    page = authorize(http)
    assert page.status_code == 200
    assert "decision" in page.text
    request_id = re.search(r"name='request_id' value='([^']+)'", page.text)
    assert request_id is not None
    form = {"request_id": request_id.group(1), "decision": "connect", "hub_id": str(OTHER_HUB)}
    code = redirect_params(http.post("/oauth/authorize/decision", data=form))["code"]
    tokens = exchange(http, code).json()
    assert (tokens["hub_id"], tokens["user_id"]) == (OTHER_HUB, 55)
    assert http.post("/oauth/authorize/decision", data=form).status_code == 400  # used up

    page = authorize(http)
    request_id = re.search(r"name='request_id' value='([^']+)'", page.text)
    assert request_id is not None
    deny = {"request_id": request_id.group(1), "decision": "deny"}
    denied = redirect_params(http.post("/oauth/authorize/decision", data=deny))
    assert denied["error"] == "access_denied"
    assert denied["state"] == "the-state"
    assert "code" not in denied


def test_switches_for_facts_only_seen_or_guessed(sim: Simulator, http: httpx.Client) -> None:
    sim.configure(
        pkce=False,
        refresh_token_format="uuid",
        error_body="legacy",
        keep_previous_access_tokens=False,
    )
    _, challenge = pkce()
    code = redirect_params(authorize(http, code_challenge=challenge, code_challenge_method="S256"))[
        "code"
    ]
    tokens = exchange(http, code).json()  # PKCE ignored: no verifier needed
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", tokens["refresh_token"])
    again = refresh(http, tokens["refresh_token"]).json()
    assert contacts(http, tokens["access_token"]).status_code == 401  # replaced by the refresh
    assert contacts(http, again["access_token"]).status_code == 200
    legacy = refresh(http, "na1-0000-0000-0000-0000-000000000000")
    assert legacy.status_code == 400
    assert set(legacy.json()) == {"status", "message", "correlationId"}
    assert legacy.json()["status"] == "BAD_REFRESH_TOKEN"


# -- fault injection and counters --------------------------------------------------------


def test_a_429_fault_hits_times_then_clears(sim: Simulator, http: httpx.Client) -> None:
    tokens = install(http)
    sim.add_fault("token", status=429, times=2)
    for _ in range(2):
        limited = refresh(http, tokens["refresh_token"])
        assert limited.status_code == 429
        assert limited.json()["errorType"] == "RATE_LIMIT"
        assert "Retry-After" not in limited.headers
    assert refresh(http, tokens["refresh_token"]).status_code == 200
    assert sim.counters()["token.refresh_token"] == 3  # failed calls count too
    assert sim.refreshes_by_hub() == {HUB: 3}


def test_token_rate_limit_answers_429_per_client_and_rolling_second(
    sim: Simulator, http: httpx.Client
) -> None:
    tokens = install(http)
    control = http.post("/_sim/config", json={"token_rate_limit": 2})
    assert control.json()["token_rate_limit"] == 2
    answers = [refresh(http, tokens["refresh_token"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    body = answers[2].json()
    assert (body["status"], body["errorType"]) == ("error", "RATE_LIMIT")
    assert body["message"] == "You have reached your rate limit."
    assert sim.counters()["token.rate_limited"] == 1
    sim.advance_clock(1.0)  # the rolling second has passed
    assert refresh(http, tokens["refresh_token"]).status_code == 200
    assert http.post("/_sim/config", json={"token_rate_limit": 0}).status_code == 400
    http.post("/_sim/config", json={"token_rate_limit": None})
    assert all(refresh(http, tokens["refresh_token"]).status_code == 200 for _ in range(4))


@pytest.mark.parametrize(
    ("status", "retry_after", "content_type", "expected_retry_after"),
    [
        (502, None, "text/html", None),
        (503, None, "text/html", None),
        (524, None, "text/html", None),
        (500, None, "application/json", None),
        (477, None, "application/json", "5"),
        (423, 3, "application/json", "3"),
        (429, 7, "application/json", "7"),
    ],
)
def test_status_faults_look_like_hubspot(
    sim: Simulator,
    http: httpx.Client,
    status: int,
    retry_after: int | None,
    content_type: str,
    expected_retry_after: str | None,
) -> None:
    tokens = install(http)
    sim.add_fault("token", status=status, retry_after=retry_after)
    for _ in range(2):  # times=None: until cleared
        response = refresh(http, tokens["refresh_token"])
        assert response.status_code == status
        assert response.headers["content-type"].startswith(content_type)
        assert response.headers.get("Retry-After") == expected_retry_after
    sim.clear_faults()
    assert refresh(http, tokens["refresh_token"]).status_code == 200


def test_credential_faults_target_one_hub(sim: Simulator, http: httpx.Client) -> None:
    sim.add_portal(OTHER_HUB)
    tokens = install(http)
    other = exchange(http, sim.issue_code(CLIENT_ID, REDIRECT, OTHER_HUB)).json()
    sim.add_fault("token", kind="invalid_grant", hub_id=HUB)
    assert_oauth_error(
        refresh(http, tokens["refresh_token"]), 400, "invalid_grant", "BAD_REFRESH_TOKEN"
    )
    assert refresh(http, other["refresh_token"]).status_code == 200
    sim.clear_faults()
    sim.add_fault("token", kind="bad_hub", hub_id=OTHER_HUB, times=1)
    assert_oauth_error(refresh(http, other["refresh_token"]), 400, "access_denied", "BAD_HUB")
    assert refresh(http, other["refresh_token"]).status_code == 200
    sim.add_fault("introspect", kind="invalid_client")
    response = introspect(http, tokens["access_token"])
    assert_oauth_error(response, 400, "invalid_client", "BAD_CLIENT_SECRET")
    assert sim.refreshes_by_hub() == {HUB: 1, OTHER_HUB: 3}


def test_faults_on_the_crm_and_authorize_endpoints(sim: Simulator, http: httpx.Client) -> None:
    access_token = install(http)["access_token"]
    sim.add_fault("contacts", status=429, times=1)
    limited = contacts(http, access_token)
    assert limited.status_code == 429
    assert limited.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert limited.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert contacts(http, access_token).status_code == 200
    sim.add_fault("authorize", status=503, times=1)
    assert authorize(http).status_code == 503
    assert authorize(http).status_code == 302
    assert sim.counters()["contacts"] == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint": "tokens", "status": 500},
        {"endpoint": "token", "status": 200},
        {"endpoint": "token"},
        {"endpoint": "token", "kind": "explode"},
        {"endpoint": "contacts", "kind": "invalid_grant"},
        {"endpoint": "token", "status": 500, "times": -1},
    ],
)
def test_bad_faults_are_rejected(sim: Simulator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        sim.add_fault(**kwargs)


def test_latency_applies_to_the_configured_endpoint_only(
    sim: Simulator, http: httpx.Client
) -> None:
    tokens = install(http)
    sim.configure(latency_ms={"token": 150})
    started = time.monotonic()
    assert refresh(http, tokens["refresh_token"]).status_code == 200
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    assert contacts(http, tokens["access_token"]).status_code == 200
    assert time.monotonic() - started < 0.15


def test_configure_rejects_unknown_keys_and_bad_values(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        sim.configure(token_ttl=5)
    with pytest.raises(ValueError, match="consent"):
        sim.configure(consent="maybe")
    with pytest.raises(ValueError, match="latency_ms"):
        sim.configure(latency_ms={"nowhere": 5})
    assert sim.settings.access_token_ttl == 1800


# -- the HTTP control API ----------------------------------------------------------------


def test_http_control_api_drives_a_whole_scenario(base_url: str, http: httpx.Client) -> None:
    assert http.post("/_sim/reset").status_code == 204
    app = {"client_id": "ctl", "client_secrets": ["ctl-secret"], "redirect_uris": [REDIRECT]}
    assert http.post("/_sim/apps", json=app).json()["app_id"] > 0
    assert http.post("/_sim/portals", json={"hub_id": 99, "user_id": 7}).status_code == 201
    config = {"access_token_ttl": 60, "rotate_refresh_tokens": True}
    assert http.post("/_sim/config", json=config).json()["access_token_ttl"] == 60
    code = redirect_params(authorize(http, client_id="ctl"))["code"]
    form = {"client_id": "ctl", "client_secret": "ctl-secret"}
    tokens = exchange(http, code, **form).json()
    assert (tokens["expires_in"], tokens["user_id"]) == (60, 7)

    fault = {"endpoint": "token", "status": 502, "times": 1}
    assert http.post("/_sim/faults", json=fault).status_code == 201
    assert refresh(http, tokens["refresh_token"], **form).status_code == 502
    assert http.post("/_sim/faults", json=fault).status_code == 201
    assert http.delete("/_sim/faults").status_code == 204
    rotated = refresh(http, tokens["refresh_token"], **form).json()
    assert rotated["refresh_token"] != tokens["refresh_token"]

    clock = http.post("/_sim/clock", json={"advance": 61}).json()
    assert clock["offset"] == 61
    assert contacts(http, rotated["access_token"]).status_code == 401

    assert http.post("/_sim/portals/99/kill", json={}).json()["killed"] >= 1
    response = refresh(http, rotated["refresh_token"], **form)
    assert_oauth_error(response, 400, "invalid_grant", "BAD_REFRESH_TOKEN")

    marketplace = {"client_id": "ctl", "redirect_uri": REDIRECT, "hub_id": 99}
    assert CODE_SHAPE.fullmatch(http.post("/_sim/codes", json=marketplace).json()["code"])

    counts = http.get("/_sim/counters").json()
    assert counts["counters"]["token.refresh_token"] == 3
    assert counts["counters"]["token.authorization_code"] == 1
    assert counts["refreshes_by_hub"] == {"99": 3}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sim/apps", {"client_id": "x", "client_secrets": "not-a-list", "redirect_uris": []}),
        ("/_sim/apps", {"client_id": "x", "client_secrets": ["s"], "redirect_uris": []}),
        ("/_sim/apps", {"client_id": "x"}),
        ("/_sim/portals", {"hub_id": "12"}),
        ("/_sim/portals", {"hub_id": 12, "colour": "red"}),
        ("/_sim/config", {"access_token_ttl": -1}),
        ("/_sim/config", {"nope": 1}),
        ("/_sim/faults", {"endpoint": "token", "status": 42}),
        ("/_sim/faults", {"endpoint": "token", "kind": "status"}),
        ("/_sim/clock", {"advance": "soon"}),
        ("/_sim/clock", {"advance": -5}),
        ("/_sim/portals/123456/kill", {}),
        ("/_sim/codes", {"client_id": "nobody", "redirect_uri": REDIRECT, "hub_id": HUB}),
        ("/_sim/config", [1, 2]),
    ],
)
def test_http_control_api_rejects_bad_input(
    http: httpx.Client, path: str, body: dict[str, Any] | list[int]
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert response.json()["message"]


def test_http_control_api_rejects_non_json(http: httpx.Client) -> None:
    response = http.post(
        "/_sim/config", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["message"]


# -- compatibility with HubSpot's official Python client ---------------------------------


def test_official_python_client_parses_every_answer(base_url: str) -> None:
    client = HubSpot(host=base_url)
    tokens_api = client.oauth.tokens_api
    access_tokens_api = client.oauth.access_tokens_api
    refresh_tokens_api = client.oauth.refresh_tokens_api
    credentials = {"client_id": CLIENT_ID, "client_secret": SECRET}
    try:
        auth_url = get_auth_url(CLIENT_ID, REDIRECT, scope=tuple(SCOPES), state="sdk state")
        assert "%20" in auth_url
        with httpx.Client() as browser:
            landing = browser.get(auth_url.replace("https://app.hubspot.com", base_url))
        params = redirect_params(landing)
        assert params["state"] == "sdk state"

        created = tokens_api.create(
            grant_type="authorization_code",
            code=params["code"],
            redirect_uri=REDIRECT,
            **credentials,
        )
        assert type(created).__name__ == "TokenResponseIF"
        assert (created.token_type, created.expires_in) == ("bearer", 1800)
        refreshed = tokens_api.create(
            grant_type="refresh_token", refresh_token=created.refresh_token, **credentials
        )
        assert refreshed.refresh_token == created.refresh_token

        info = access_tokens_api.get(refreshed.access_token)
        assert type(info).__name__ == "AccessTokenInfoResponse"
        assert (info.hub_id, info.user_id, info.scopes, info.token_type) == (
            HUB,
            1_000_001,
            SCOPES,
            "access",
        )
        assert 0 < info.expires_in <= 1800
        refresh_info = refresh_tokens_api.get(created.refresh_token)
        assert type(refresh_info).__name__ == "RefreshTokenInfoResponse"
        assert (refresh_info.client_id, refresh_info.hub_id) == (CLIENT_ID, HUB)
        assert refresh_tokens_api.archive(created.refresh_token) is None

        with pytest.raises(ApiException) as dead:
            tokens_api.create(
                grant_type="refresh_token", refresh_token=created.refresh_token, **credentials
            )
        assert dead.value.status == 400
        assert '"status":"BAD_REFRESH_TOKEN"' in dead.value.body
        with pytest.raises(ApiException) as unknown:
            access_tokens_api.get("CO-unknown-token")
        assert unknown.value.status == 404
    finally:
        for api in (tokens_api, access_tokens_api, refresh_tokens_api):
            api.api_client.rest_client.pool_manager.clear()


# -- secrets, lifecycle, CLI -------------------------------------------------------------


def test_simulator_logs_no_token(
    sim: Simulator,
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = install(http)
    refresh(http, tokens["refresh_token"])
    contacts(http, tokens["access_token"])
    http.get(f"/oauth/v1/access-tokens/{tokens['access_token']}")
    http.get("/crm/v3/objects/contacts", headers={"Authorization": "Bearer CO-canary"})
    # The test's own httpx client logs URLs; only the simulator's records matter here.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = "\n".join(r.getMessage() for r in records) + "".join(capsys.readouterr())
    for secret in (tokens["access_token"], tokens["refresh_token"], SECRET, "CO-canary"):
        assert secret not in text
    assert sim.counters()["contacts"] == 2


def test_run_in_thread_stops_cleanly_with_an_open_connection() -> None:
    sim = Simulator()
    with httpx.Client(timeout=5) as client:
        with run_in_thread(sim) as url:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            assert client.get(f"{url}/_sim/counters").status_code == 200
            started = time.monotonic()
        assert time.monotonic() - started < 5
        with pytest.raises(httpx.ConnectError):
            client.get(f"{url}/_sim/counters")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_cli_serves_a_configured_app() -> None:
    port = _free_port()
    secret = "cli-secret-must-not-leak"
    command = [
        sys.executable, "-m", "broker.dev.simulator", "--port", str(port), "--client-id", "cli",
        "--client-secret", secret, "--redirect-uri", REDIRECT, "--token-ttl", "99", "--rotate",
        "--hub-id", "31337",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=5) as http:
            deadline = time.monotonic() + 15
            while True:
                try:
                    config = http.get("/_sim/config").json()
                    break
                except httpx.TransportError:
                    assert process.poll() is None, "the simulator exited"
                    assert time.monotonic() < deadline, "the simulator did not start"
                    time.sleep(0.05)
            assert (config["access_token_ttl"], config["rotate_refresh_tokens"]) == (99, True)
            code = redirect_params(authorize(http, client_id="cli"))["code"]
            tokens = exchange(http, code, client_id="cli", client_secret=secret).json()
            assert (tokens["hub_id"], tokens["expires_in"]) == (31337, 99)
    finally:
        process.terminate()
        stdout, stderr = process.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}" in stderr
    assert secret not in stdout + stderr
    assert tokens["access_token"] not in stdout + stderr
