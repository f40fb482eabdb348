"""Operator-signed install links: ``/oauth/install`` starts a flow only for a genuine,
unexpired link for the app (unless links are not required); every refusal is a 403 with a
stable code and starts nothing; minting is audited without the link."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from typing import Any

import httpx
import pytest
import redis

from broker.app import create_app, open_admin
from broker.config import MAX_INSTALL_LINK_TTL, Settings, load_settings
from broker.core.signing import Purpose
from broker.dev.simulator import Simulator
from broker.errors import ConfigError, InvalidRequest
from broker.web.oauth import COOKIE
from tests.helpers import Deploy, Deployment, audited, install_link, register, run_broker, serve_app
from tests.links import assert_failed, claims, portal_count, sign, token_of

HUB = 7_800_001


@pytest.fixture
def deployment(deploy: Deploy, sim: Simulator) -> Deployment:
    d = deploy(portals=(HUB,))  # links required: the default
    register(d.settings, sim, f"{d.url}/oauth/callback", slug="other")
    sim.configure(consent="auto", consent_hub_id=HUB)
    return d


def state_keys(settings: Settings) -> list[Any]:
    client = redis.Redis.from_url(settings.redis_url.get())
    try:
        return list(client.scan_iter(f"{settings.redis_prefix}state:*"))
    finally:
        client.close()


def payload_of(url: str) -> dict[str, Any]:
    body = token_of(url).split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return decoded


def assert_refused(deployment: Deployment, params: dict[str, str], code: str) -> None:
    """Refused as a page and as problem+json; no state, no cookie, nothing stored."""
    url = f"{deployment.url}/oauth/install"
    with httpx.Client() as browser:
        page = browser.get(url, params=params)
        assert_failed(page, 403, code)
        assert not browser.cookies.get(COOKIE)
        problem = browser.get(url, params=params, headers={"Accept": "application/json"})
        assert problem.status_code == 403
        assert problem.headers["content-type"] == "application/problem+json"
        assert problem.json()["code"] == code
    assert state_keys(deployment.settings) == []
    assert portal_count(deployment.settings) == 0


def test_a_valid_link_installs(deployment: Deployment) -> None:
    url = install_link(deployment.settings, "demo")
    assert url.startswith(f"{deployment.url}/oauth/install?app=demo&link=")
    assert payload_of(url)["app"] == "demo"
    with httpx.Client() as browser:
        start = browser.get(url)
        assert start.status_code == 302
        assert browser.cookies.get(COOKIE)
        assert len(state_keys(deployment.settings)) == 1
        done = browser.get(browser.get(start.headers["location"]).headers["location"])
    assert done.status_code == 200, done.text
    assert "Portal connected" in done.text
    assert portal_count(deployment.settings) == 1


def test_no_link_is_refused_and_starts_nothing(deployment: Deployment) -> None:
    assert_refused(deployment, {"app": "demo"}, "install_link_required")
    assert_refused(deployment, {"app": "demo", "link": ""}, "install_link_required")


def _tampered(url: str) -> str:
    """The payload of a genuine link rewritten (a later expiry), its signature kept."""
    body, _, signature = token_of(url).partition(".")
    data = payload_of(url)
    data["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    assert forged != body
    return f"{forged}.{signature}"


@pytest.mark.parametrize(
    "case",
    [
        "tampered",
        "wrong_key",
        "bad_signature",
        "malformed",
        "other_app",
        "return_to_not_in_link",
        "old_format",
        "unknown_field",
        "not_stored",
    ],
)
def test_bad_links_are_invalid(deployment: Deployment, case: str) -> None:
    settings = deployment.settings
    exp = int(time.time()) + 600
    params = {"app": "demo"}
    if case == "tampered":
        params["link"] = _tampered(install_link(settings, "demo"))
    elif case == "wrong_key":
        # Genuinely signed by this deployment, but with another purpose's key (sessions).
        body = _b64(_json(claims("demo", exp).payload()))
        params["link"] = _sign_raw(settings, body, purpose=Purpose.SESSION)
    elif case == "bad_signature":
        body = token_of(install_link(settings, "demo")).split(".")[0]
        params["link"] = f"{body}.v1.{'A' * 43}"
    elif case == "malformed":
        params["link"] = "not-a-link"
    elif case == "other_app":
        params["link"] = token_of(install_link(settings, "other"))  # genuine, for "other"
    elif case == "return_to_not_in_link":
        params["link"] = token_of(install_link(settings, "demo"))
        params["return_to"] = "https://elsewhere.example/"
    elif case == "old_format":  # before signing keys: base64url(payload).base64url(HMAC)
        body = _b64(_json({"app": "demo", "exp": exp}))
        params["link"] = f"{body}.{_b64(hmac.digest(b'k' * 32, body.encode(), 'sha256'))}"
    elif case == "unknown_field":  # genuinely signed, but a field the broker never writes
        payload = _json({**claims("demo", exp).payload(), "scope": "all"})
        params["link"] = _sign_raw(settings, _b64(payload))
    else:  # genuinely signed, well formed, but never minted (no stored row): not a link
        params["link"] = _sign_raw(settings, _b64(_json(claims("demo", exp).payload())))
    assert_refused(deployment, params, "install_link_invalid")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _sign_raw(settings: Settings, body: str, *, purpose: Purpose = Purpose.INSTALL_LINK) -> str:
    """Sign any payload segment as a link: with the link key (a Transit key in Vault), or
    with another purpose's key."""

    async def run() -> str:
        async with open_admin(settings) as svc:
            return str(await svc.keyring.sign(purpose, "install-link/v2", body.encode()))

    return f"{body}.{asyncio.run(run())}"


def test_expired_links(deployment: Deployment) -> None:
    past = sign(deployment.settings, claims("demo", int(time.time()) - 1))
    assert_refused(deployment, {"app": "demo", "link": past}, "install_link_expired")
    short = install_link(deployment.settings, "demo", ttl=1)
    time.sleep(2.1)
    assert_refused(deployment, {"app": "demo", "link": token_of(short)}, "install_link_expired")


def test_minting_checks_ttl_return_to_and_app(deployment: Deployment, env: dict[str, str]) -> None:
    for options in (
        {"ttl": 0},
        {"ttl": MAX_INSTALL_LINK_TTL + 1},
        {"return_to": "https://evil.example/"},  # BROKER_RETURN_TO_ORIGINS is empty here
    ):
        with pytest.raises(InvalidRequest):
            install_link(deployment.settings, "demo", **options)
    result = run_broker(env, "apps", "install-link", "nope")
    assert result.returncode == 1
    assert "app_not_found" in result.stderr


def test_links_not_required(env: dict[str, str], sim: Simulator) -> None:
    settings = load_settings({**env, "BROKER_INSTALL_LINKS_REQUIRED": "false"})
    with serve_app(create_app(settings)) as url:
        register(settings, sim, f"{url}/oauth/callback", slug="demo")
        sim.add_portal(HUB)
        sim.configure(consent="auto", consent_hub_id=HUB)
        with httpx.Client() as browser:
            bare = browser.get(f"{url}/oauth/install", params={"app": "demo"})
            assert bare.status_code == 302
            done = browser.get(browser.get(bare.headers["location"]).headers["location"])
            assert done.status_code == 200, done.text
            forged = browser.get(
                f"{url}/oauth/install", params={"app": "demo", "link": "forged.link"}
            )
            assert_failed(forged, 403, "install_link_invalid")  # a present link is verified
        assert portal_count(settings) == 1


def test_settings_bound_the_ttl(env: dict[str, str]) -> None:
    assert load_settings(env).install_links_required is True
    assert load_settings(env).install_link_ttl == 7 * 86400
    for bad in ("0", str(MAX_INSTALL_LINK_TTL + 1)):
        with pytest.raises(ConfigError, match="BROKER_INSTALL_LINK_TTL"):
            load_settings({**env, "BROKER_INSTALL_LINK_TTL": bad})


def test_cli_links_work_and_are_audited_without_the_token(
    deployment: Deployment, env: dict[str, str]
) -> None:
    result = run_broker(env, "apps", "install-link", "demo", "--ttl", "600")
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert "\n" not in url
    assert url.startswith(f"{deployment.url}/oauth/install?app=demo&link=")
    assert 590 <= payload_of(url)["exp"] - time.time() <= 600
    with httpx.Client(follow_redirects=True) as browser:
        done = browser.get(url)
    assert done.status_code == 200, done.text
    assert "Portal connected" in done.text

    again = run_broker(env, "portals", "install-link", str(HUB), "--app", "demo", "--json")
    assert again.returncode == 0, again.stderr
    reinstall = json.loads(again.stdout)
    assert set(reinstall) == {"url", "expires_at", "id"}
    assert payload_of(reinstall["url"])["hub_id"] == HUB

    found = audited(deployment.settings, "install_link.created")
    assert len(found) == 2
    assert all(e["actor"].startswith("cli") for e in found)
    by_hub = {e["hub_id"]: e for e in found}
    assert by_hub[HUB]["app"] == "demo"
    assert by_hub[HUB]["detail"]["expires_at"] == reinstall["expires_at"]
    assert by_hub[None]["detail"]["app"] == "demo"
    dumped = json.dumps(found, default=str)
    for minted in (url, reinstall["url"]):
        token = token_of(minted)
        assert token not in dumped
        assert token.partition(".")[2] not in dumped  # not even the signature


def test_a_reinstall_link_connects_only_its_portal(deployment: Deployment) -> None:
    """A portal's re-install link names its hub: consenting for another portal on HubSpot's
    page stores nothing, and the grant HubSpot just issued is revoked at once."""
    assert deployment.install(HUB).status_code == 200
    other = HUB + 1
    deployment.sim.add_portal(other)
    deployment.sim.configure(consent="auto", consent_hub_id=other)
    url = install_link(deployment.settings, "demo", hub_id=HUB)
    assert payload_of(url)["hub_id"] == HUB
    revokes = deployment.sim.counters().get("revoke", 0)
    with httpx.Client(follow_redirects=True) as browser:
        done = browser.get(url)
    assert_failed(done, 400, "install_wrong_portal")
    assert portal_count(deployment.settings) == 1  # only HUB, from the first install
    assert deployment.sim.counters().get("revoke", 0) == revokes + 1
    # The same link for the right portal works.
    deployment.sim.configure(consent="auto", consent_hub_id=HUB)
    with httpx.Client(follow_redirects=True) as browser:
        assert browser.get(url).status_code == 200


def _operator(settings: Settings, action: str, hub: int) -> None:
    from broker.core.models import PortalKey

    async def run() -> None:
        async with open_admin(settings) as svc:
            key = PortalKey("demo", hub)
            if action == "quarantine":
                await svc.operations.quarantine(key, actor="test", reason="suspicious")
            elif action == "release":
                await svc.operations.release(key, actor="test")
            else:
                await svc.operations.revoke(key, actor="test", reason="offboarded")

    asyncio.run(run())


def test_a_reinstall_never_lifts_an_operators_quarantine(deployment: Deployment) -> None:
    assert deployment.install(HUB).status_code == 200
    _operator(deployment.settings, "quarantine", HUB)
    refreshes = deployment.sim.counters().get("token.authorization_code", 0)
    again = deployment.install(HUB)  # the app-wide link, still valid
    assert again.status_code == 200, again.text
    assert deployment.sim.counters()["token.authorization_code"] == refreshes + 1
    held = deployment.token(HUB)
    assert (held.status_code, held.json()["code"]) == (409, "quarantined")
    _operator(deployment.settings, "release", HUB)
    assert deployment.token(HUB).status_code == 200  # the re-installed grant, once released


def test_a_revoked_portal_is_connected_again_only_through_its_own_link(
    deployment: Deployment,
) -> None:
    assert deployment.install(HUB).status_code == 200
    _operator(deployment.settings, "revoke", HUB)
    revokes = deployment.sim.counters().get("revoke", 0)
    with httpx.Client(follow_redirects=True) as browser:
        refused = browser.get(install_link(deployment.settings, "demo"))  # app-wide link
    assert_failed(refused, 400, "install_portal_revoked")
    assert deployment.sim.counters()["revoke"] == revokes + 1  # the fresh grant given back
    gone = deployment.token(HUB)
    assert (gone.status_code, gone.json()["code"]) == (410, "revoked")
    # An operator's link for this very portal is the decision to connect it again.
    with httpx.Client(follow_redirects=True) as browser:
        allowed = browser.get(install_link(deployment.settings, "demo", hub_id=HUB))
    assert allowed.status_code == 200, allowed.text
    assert deployment.token(HUB).status_code == 200


def test_a_retired_app_installs_nothing_and_keeps_serving(
    deployment: Deployment, env: dict[str, str]
) -> None:
    """Retiring refuses outstanding links and new ones, and never the portals installed."""
    assert deployment.install(HUB).status_code == 200
    link = install_link(deployment.settings, "demo")

    async def retire(retired: bool) -> None:
        async with open_admin(deployment.settings) as svc:
            await svc.admin.retire_app("demo", retired=retired, actor="test")

    asyncio.run(retire(True))
    with httpx.Client() as browser:
        page = browser.get(link)
        assert page.status_code == 409, page.text
        assert "app_retired" in page.text
    minted = run_broker(env, "apps", "install-link", "demo")
    assert minted.returncode == 1
    assert "error (app_retired):" in minted.stderr
    assert deployment.token(HUB).status_code == 200  # its portal is still served
    asyncio.run(retire(False))
    with httpx.Client() as browser:
        assert browser.get(link).status_code == 302  # to HubSpot's consent page
