"""The install flow's failure paths: each gives a clear page with a 4xx (or 503 when HubSpot
is down), and nothing is stored."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from broker.app import create_app
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator
from broker.errors import InvalidRequest
from broker.web.oauth import COOKIE
from tests.helpers import Deploy, Deployment, install_link, register, serve_app
from tests.links import assert_failed, claims, portal_count, sign

HUB = 7_700_001


@pytest.fixture
def deployment(deploy: Deploy, sim: Simulator) -> Deployment:
    d = deploy(env={"BROKER_INSTALL_STATE_TTL": "2"}, portals=(HUB,))
    sim.configure(consent="auto", consent_hub_id=HUB)
    return d


def start(deployment: Deployment, browser: httpx.Client) -> str:
    """Run the flow up to HubSpot's redirect back; returns the callback URL (not visited)."""
    install = browser.get(link(deployment))
    assert install.status_code == 302
    assert install.headers["cache-control"] == "no-store"
    authorize = urlsplit(install.headers["location"])
    query = parse_qs(authorize.query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["state"][0]) >= 32
    assert query["redirect_uri"] == [f"{deployment.url}/oauth/callback"]
    consent = browser.get(install.headers["location"])
    assert consent.status_code == 302
    return consent.headers["location"]


def link(deployment: Deployment) -> str:
    if not deployment.link_url:
        deployment.link_url = install_link(deployment.settings, deployment.app)
    return deployment.link_url


def test_state_is_single_use(deployment: Deployment) -> None:
    with httpx.Client() as browser:
        callback = start(deployment, browser)
        assert browser.get(callback).status_code == 200
        assert_failed(browser.get(callback), 400, "install_state_invalid")
    assert portal_count(deployment.settings) == 1


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"code": "na1-aaaa-bbbb"}, "install_state_missing"),
        ({"code": "na1-aaaa-bbbb", "state": "forged"}, "install_state_invalid"),
    ],
)
def test_missing_or_unknown_state(deployment: Deployment, query: dict[str, str], code: str) -> None:
    with httpx.Client() as browser:
        assert_failed(browser.get(f"{deployment.url}/oauth/callback", params=query), 400, code)
    assert portal_count(deployment.settings) == 0


def test_state_is_bound_to_the_browser(deployment: Deployment) -> None:
    with httpx.Client() as browser:
        callback = start(deployment, browser)
    with httpx.Client(cookies={COOKIE: "another-browser"}) as other:
        assert_failed(other.get(callback), 400, "install_state_mismatch")
    with httpx.Client() as no_cookie:  # and the state was burned by the attempt
        assert_failed(no_cookie.get(callback), 400, "install_state_invalid")
    assert portal_count(deployment.settings) == 0


def test_expired_state(deployment: Deployment) -> None:
    with httpx.Client() as browser:
        callback = start(deployment, browser)
        time.sleep(2.5)  # BROKER_INSTALL_STATE_TTL=2: Redis drops the state
        assert_failed(browser.get(callback), 400, "install_state_invalid")
    assert portal_count(deployment.settings) == 0


def test_denial(deployment: Deployment) -> None:
    deployment.sim.configure(consent="page")
    with httpx.Client() as browser:
        install = browser.get(link(deployment))
        page = browser.get(install.headers["location"])
        assert page.status_code == 200
        state = parse_qs(urlsplit(install.headers["location"]).query)["state"][0]
        callback = browser.get(
            f"{deployment.url}/oauth/callback",
            params={"error": "access_denied", "error_description": "no", "state": state},
        )
        assert_failed(callback, 400, "install_denied")
    assert portal_count(deployment.settings) == 0


def test_hubspot_rejects_the_code(deployment: Deployment) -> None:
    with httpx.Client() as browser:
        callback = start(deployment, browser)
        query = parse_qs(urlsplit(callback).query)
        forged = f"{deployment.url}/oauth/callback?state={query['state'][0]}&code=na1-0000-0000"
        assert_failed(browser.get(forged), 400, "install_code_rejected")
    assert portal_count(deployment.settings) == 0


def test_hubspot_down_during_exchange(deployment: Deployment) -> None:
    deployment.sim.add_fault("token", status=503)
    with httpx.Client() as browser:
        callback = start(deployment, browser)
        response = browser.get(callback)
        assert_failed(response, 503, "hubspot_unavailable")
        assert "retry-after" in response.headers
    assert portal_count(deployment.settings) == 0


def test_json_clients_get_problem_json(deployment: Deployment) -> None:
    response = httpx.get(
        f"{deployment.url}/oauth/callback",
        params={"state": "x", "code": "y"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "install_state_invalid"


def test_unknown_app(deployment: Deployment) -> None:
    token = sign(deployment.settings, claims("nope", int(time.time()) + 60))
    response = httpx.get(f"{deployment.url}/oauth/install", params={"app": "nope", "link": token})
    assert_failed(response, 404, "app_not_found")


def test_return_to_only_to_allowed_origins(env: dict[str, str], sim: Simulator) -> None:
    settings = load_settings({**env, "BROKER_RETURN_TO_ORIGINS": "https://admin.example.com"})
    with serve_app(create_app(settings)) as url:
        register(settings, sim, f"{url}/oauth/callback", slug="demo")
        sim.add_portal(HUB)
        sim.configure(consent="auto", consent_hub_id=HUB)
        with pytest.raises(InvalidRequest):  # never minted for such an origin
            install_link(settings, "demo", return_to="https://evil.example/steal")
        exp = int(time.time()) + 60
        with httpx.Client() as browser:
            # Signed, yet refused: the origin check applies to a link's return_to too.
            token = sign(settings, claims("demo", exp, "https://evil.example/steal"))
            evil = browser.get(f"{url}/oauth/install", params={"app": "demo", "link": token})
            assert_failed(evil, 422, "invalid_request")
            good = browser.get(
                install_link(settings, "demo", return_to="https://admin.example.com/portals")
            )
            assert good.status_code == 302
            back = browser.get(browser.get(good.headers["location"]).headers["location"])
            assert back.status_code == 303
            assert back.headers["location"] == "https://admin.example.com/portals"
        assert portal_count(settings) == 1


@pytest.mark.parametrize("opted_in", [True, False], ids=["opted-in", "not-opted-in"])
def test_marketplace_install_without_state(
    env: dict[str, str], sim: Simulator, opted_in: bool
) -> None:
    settings = load_settings(env)
    with serve_app(create_app(settings)) as url:
        redirect = f"{url}/oauth/callback"
        client_id, _, _ = register(
            settings, sim, redirect, slug="demo", allow_marketplace_installs=opted_in
        )
        sim.add_portal(HUB)
        code = sim.issue_code(client_id, redirect, HUB)  # HubSpot's marketplace flow
        response = httpx.get(redirect, params={"code": code})
        if opted_in:
            assert response.status_code == 200, response.text
            assert "Portal connected" in response.text
            assert portal_count(settings) == 1
        else:
            assert_failed(response, 400, "install_state_missing")
            assert portal_count(settings) == 0
            assert sim.counters().get("token.authorization_code", 0) == 0


def _rewrite_state(
    settings: Settings, state: str, change: Callable[[dict[str, Any]], None]
) -> None:
    """Change the stored install state the way someone with write access to Redis would:
    decode the payload, edit it, store it again (the seal, if any, left as it was)."""
    client = redis.Redis.from_url(settings.redis_url.get())
    try:
        name = f"{settings.redis_prefix}state:{state}"
        raw = client.get(name)
        assert raw is not None
        body, dot, seal = raw.decode().partition(".")
        sealed = bool(dot) and not body.startswith("{")
        data = json.loads(
            base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)) if sealed else raw
        )
        change(data)
        encoded = json.dumps(data, separators=(",", ":"), sort_keys=True)
        if sealed:
            encoded = base64.urlsafe_b64encode(encoded.encode()).rstrip(b"=").decode() + "." + seal
        client.set(name, encoded, keepttl=True)
    finally:
        client.close()


def _state_of(callback: str) -> str:
    return parse_qs(urlsplit(callback).query)["state"][0]


TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "verifier null": lambda data: data.update(verifier=None),  # would skip PKCE
    "return_to": lambda data: data.update(return_to="https://evil.example/steal"),
    "hub_id": lambda data: data.update(hub_id=HUB + 1),  # an app-wide link bound to a portal
    "app": lambda data: data.update(app="other"),
}


def test_a_tampered_install_state_is_refused(deployment: Deployment) -> None:
    """Redis is not trusted with the install state: any edit to it is refused before the code
    is exchanged, with a stable code, and nothing is stored."""
    with httpx.Client() as browser:
        for name, change in TAMPERING.items():
            callback = start(deployment, browser)
            _rewrite_state(deployment.settings, _state_of(callback), change)
            response = browser.get(callback, headers={"Accept": "application/json"})
            assert response.status_code == 400, (name, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "install_state_tampered", name
        callback = start(deployment, browser)
        _rewrite_state(deployment.settings, _state_of(callback), TAMPERING["verifier null"])
        assert_failed(browser.get(callback), 400, "install_state_tampered")  # the page
    assert portal_count(deployment.settings) == 0
    assert deployment.sim.counters().get("token.authorization_code", 0) == 0


def test_a_sealed_state_does_not_open_under_another_state_id(deployment: Deployment) -> None:
    with httpx.Client() as first, httpx.Client() as second:
        one, two = start(deployment, first), start(deployment, second)
        client = redis.Redis.from_url(deployment.settings.redis_url.get())
        try:
            prefix = f"{deployment.settings.redis_prefix}state:"
            stolen = client.get(prefix + _state_of(one))
            assert stolen is not None
            client.set(prefix + _state_of(two), stolen, keepttl=True)
        finally:
            client.close()
        response = second.get(two, headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "install_state_tampered"
    assert portal_count(deployment.settings) == 0


def test_return_to_is_checked_again_at_the_callback(env: dict[str, str], sim: Simulator) -> None:
    """An origin allowed when the flow began but not when it comes back (the setting changed
    between the two, on another replica): no redirect there, and no code exchanged."""
    allowed = "https://admin.example.com"
    before = load_settings({**env, "BROKER_RETURN_TO_ORIGINS": allowed})
    with serve_app(create_app(before)) as url, serve_app(create_app(load_settings(env))) as now:
        register(before, sim, f"{url}/oauth/callback", slug="demo")
        sim.add_portal(HUB)
        sim.configure(consent="auto", consent_hub_id=HUB)
        with httpx.Client() as browser:
            begun = browser.get(install_link(before, "demo", return_to=f"{allowed}/portals"))
            assert begun.status_code == 302
            callback = browser.get(begun.headers["location"]).headers["location"]
            back = browser.get(callback.replace(url, now))
        assert_failed(back, 400, "install_return_to_refused")
        assert "location" not in back.headers
        assert portal_count(before) == 0
        assert sim.counters().get("token.authorization_code", 0) == 0
