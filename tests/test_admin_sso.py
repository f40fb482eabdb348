"""Single sign-on on the operator page against a real OpenID Provider (panva's
oidc-provider, :mod:`tests.oidc_idp`) over HTTPS: a person in the mapped group signs in and
revokes a portal in a real headless Chromium; a person in no mapped group is refused; and
the flow's defences, one by one, over HTTP: state, replay, expiry, nonce, audience,
authorized party, PKCE, and the caller-key login switched off."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import pytest
from playwright.sync_api import sync_playwright

from broker.app import create_app, open_admin, probe_backends
from broker.config import ConfigError, Settings, load_settings
from broker.core.signing import Purpose
from broker.dev.simulator import Simulator
from broker.web import admin_page
from tests.helpers import Deployment, audited, deployed, serve_app
from tests.oidc_idp import Idp, idp_fixture, query
from tests.operator_page import ADMIN, CHROMIUM_FLAGS, csrf, error_code

__all__ = ["idp_fixture"]  # the "idp" fixture

HUB = 3_500_001
CALLBACK = "/admin/oidc/callback"


@contextmanager
def sso_deployment(
    env: dict[str, str], sim: Simulator, idp: Idp, **extra: str
) -> Iterator[tuple[Deployment, str]]:
    """A broker whose operator page signs in through ``idp`` (platform-admins may manage
    portals); yields it and its OIDC client id."""
    client_id, secret = f"broker-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    settings = load_settings(
        {
            **env,
            "BROKER_OIDC_ISSUER": idp.issuer,
            "BROKER_OIDC_CLIENT_ID": client_id,
            "BROKER_OIDC_CLIENT_SECRET": secret,
            "BROKER_OIDC_SCOPES": "openid email groups",
            "BROKER_OIDC_ROLES": "platform-admins=portals:admin+callers:admin",
            "BROKER_CA_BUNDLE": str(idp.ca),
            **extra,
        }
    )
    with deployed(settings, sim, "", installed=(HUB,), roles=ADMIN) as d:
        idp.register(client_id, secret, f"{d.url}{CALLBACK}")
        yield d, client_id


@pytest.fixture
def deployment(env: dict[str, str], sim: Simulator, idp: Idp) -> Iterator[Deployment]:
    with sso_deployment(env, sim, idp) as (found, _):
        yield found


def start(client: httpx.Client) -> str:
    """Begin a sign-in: the authorization URL the broker sends the browser to."""
    begun = client.get("/admin/oidc/login")
    assert begun.status_code == 303, begun.text
    assert admin_page.FLOW_COOKIE in client.cookies
    return begun.headers["location"]


def sign_in(d: Deployment, idp: Idp, client: httpx.Client, user: str) -> httpx.Response:
    """The whole flow over HTTP; returns the broker's answer to the callback."""
    back = idp.authorize(start(client), user, stop_at=d.url)
    return client.get(back)


def audit(settings: Settings, action: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 15
    while True:  # the audit writer flushes in the background
        found = audited(settings, action)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_mapped_user_signs_in_and_revokes_in_a_real_browser(
    deployment: Deployment, idp: Idp, chromium: str, tmp_path: Path
) -> None:
    row = f"#portal-demo-{HUB}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            # The test IdP's certificate is from its own CA (the broker trusts it through
            # BROKER_CA_BUNDLE; the browser is told to accept it).
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{deployment.url}/admin/login")
            assert page.locator("#key").count() == 0  # no key form while SSO is on
            page.screenshot(path=tmp_path / "login.png")
            page.click("text=Sign in with SSO")
            page.wait_for_url(f"{idp.issuer}/interaction/*")
            page.fill("#login", "alice")
            page.fill("#password", "alice-pw")
            page.click("#sign-in")
            page.wait_for_url(f"{deployment.url}/admin")
            assert "Signed in as oidc:alice@example.com" in page.inner_text("header")
            assert page.inner_text(f"{row} .state") == "active"
            page.fill(f"{row} input[name=reason]", "sso drill")
            page.click(f"{row} button.danger")
            page.wait_for_url(f"{deployment.url}/admin?done=revoked*")
            assert page.inner_text(f"{row} .state") == "revoked"
            page.screenshot(path=tmp_path / "revoked.png", full_page=True)

            # Bob is known to the IdP but in no mapped group.
            other = browser.new_context(ignore_https_errors=True).new_page()
            other.set_default_timeout(15_000)
            other.goto(f"{deployment.url}/admin/oidc/login")
            other.fill("#login", "bob")
            other.fill("#password", "bob-pw")
            with other.expect_response(lambda r: CALLBACK in r.url) as answered:
                other.click("#sign-in")
            assert answered.value.status == 403
            assert "sso_no_role" in other.inner_text("main")
            other.screenshot(path=tmp_path / "refused.png")
            # (cookies are not per port: the IdP's, on 127.0.0.1 too, are listed as well)
            names = {c["name"] for c in other.context.cookies(deployment.url)}
            assert admin_page.COOKIE not in names
            assert admin_page.FLOW_COOKIE not in names
        finally:
            browser.close()
    gone = deployment.token(HUB)
    assert (gone.status_code, gone.json()["code"]) == (410, "revoked")
    revoked = audit(deployment.settings, "portal.revoked")
    assert [e["actor"] for e in revoked] == ["oidc:alice@example.com"]


def test_a_user_in_no_mapped_group_is_refused_and_audited(deployment: Deployment, idp: Idp) -> None:
    with deployment.client() as client:
        refused = sign_in(deployment, idp, client, "bob")
        assert (refused.status_code, error_code(refused)) == (403, "sso_no_role")
        assert "oidc:bob@example.com" in refused.text
        assert refused.headers["cache-control"] == "no-store"
        assert admin_page.COOKIE not in client.cookies
        assert admin_page.FLOW_COOKIE not in client.cookies  # the flow is over either way
        assert client.get("/admin").headers["location"] == "/admin/login"
    events = audit(deployment.settings, "admin.sso_refused")
    assert [e["actor"] for e in events] == ["oidc:bob@example.com"]


def test_an_sso_session_carries_its_roles_and_logs_out(deployment: Deployment, idp: Idp) -> None:
    with deployment.client() as client:
        done = sign_in(deployment, idp, client, "alice")
        assert (done.status_code, done.headers["refresh"]) == (200, "0; url=/admin")
        cookie = done.headers["set-cookie"]
        assert "samesite=strict" in cookie.lower()
        assert "Path=/admin;" in cookie
        assert "Max-Age=1800" in cookie
        body = client.cookies[admin_page.COOKIE].split(".")[0]
        sealed = base64.urlsafe_b64decode(body + "==").decode()
        assert '"kind":"oidc"' in sealed
        assert '"portals:admin"' in sealed
        assert "Signed in as <strong>oidc:alice@example.com</strong>" in client.get("/admin").text
        out = client.post("/admin/logout", data={"csrf": csrf(client)})
        assert (out.status_code, out.headers["location"]) == (303, "/admin/login")
        assert admin_page.COOKIE not in client.cookies
        assert client.get("/admin").status_code == 303
    logins = audit(deployment.settings, "admin.sso_login")
    assert [e["actor"] for e in logins] == ["oidc:alice@example.com"]


def test_a_callback_for_another_state_or_browser_is_refused(
    deployment: Deployment, idp: Idp
) -> None:
    with deployment.client() as mine, deployment.client() as theirs:
        back = idp.authorize(start(theirs), "alice", stop_at=deployment.url)
        start(mine)  # my own flow, with another state
        for url in (back, _with(back, state="forged")):
            crossed = mine.get(url)  # their code, into my browser (login CSRF)
            assert (crossed.status_code, error_code(crossed)) == (400, "sso_state_invalid")
        with deployment.client() as fresh:  # no flow cookie at all
            bare = fresh.get(back)
            assert (bare.status_code, error_code(bare)) == (400, "sso_state_invalid")
        mixed_up = theirs.get(_with(back, iss="https://evil.example"))
        assert (mixed_up.status_code, error_code(mixed_up)) == (400, "sso_state_invalid")
        assert admin_page.COOKIE not in mine.cookies


def test_a_replayed_altered_or_expired_flow_cookie_is_refused(
    deployment: Deployment, idp: Idp
) -> None:
    with deployment.client() as client:
        back = idp.authorize(start(client), "alice", stop_at=deployment.url)
        flow = client.cookies[admin_page.FLOW_COOKIE]
        assert client.get(back).status_code == 200
    with deployment.client(cookies={admin_page.FLOW_COOKIE: flow}) as replay:
        again = replay.get(back)
        assert (again.status_code, error_code(again)) == (400, "sso_state_used")
        assert admin_page.COOKIE not in replay.cookies

    body, _, mac = flow.partition(".")
    altered = f"{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{mac}"
    state = query(back)["state"]
    expired = _sealed_flow(deployment.settings, state, expires=int(time.time()) - 1)
    for cookie in (altered, expired):
        with deployment.client(cookies={admin_page.FLOW_COOKIE: cookie}) as client:
            refused = client.get(_with(back, code="unused"))
            assert (refused.status_code, error_code(refused)) == (400, "sso_state_invalid")


def test_an_id_token_with_another_nonce_is_refused(deployment: Deployment, idp: Idp) -> None:
    with deployment.client() as client:
        url = start(client)
        # The authorization request altered on its way: the IdP signs the nonce it was given.
        back = idp.authorize(_with(url, nonce="not-this-browsers"), "alice", stop_at=deployment.url)
        refused = client.get(back)
        assert (refused.status_code, error_code(refused)) == (400, "sso_id_token_invalid")
        assert "nonce" in refused.text
        assert admin_page.COOKIE not in client.cookies


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "another-client"}, "issued to another client"),
        ({"aud": ["CLIENT", "another-client"], "azp": "another-client"}, "authorized party"),
        ({"iss": "https://another-issuer.example"}, "another issuer"),
        ({"exp": 1_000_000_000}, "expired"),
    ],
)
def test_an_id_token_for_another_audience_party_or_issuer_is_refused(
    env: dict[str, str],
    sim: Simulator,
    idp: Idp,
    claims: dict[str, object],
    reason: str,
) -> None:
    with sso_deployment(env, sim, idp) as (d, client_id), d.client() as client:
        back = idp.authorize(start(client), "alice", stop_at=d.url)
        if isinstance(claims.get("aud"), list):
            claims = {**claims, "aud": [client_id, "another-client"]}
        idp.fault_id_token(**claims)  # the IdP signs these claims with its real key
        refused = client.get(back)
        assert (refused.status_code, error_code(refused)) == (400, "sso_id_token_invalid")
        assert reason in refused.text
        assert admin_page.COOKIE not in client.cookies


def test_the_pkce_verifier_is_what_redeems_the_code(
    env: dict[str, str], sim: Simulator, idp: Idp
) -> None:
    with sso_deployment(env, sim, idp) as (d, client_id), d.client() as client:
        url = start(client)
        asked = query(url)
        assert asked["code_challenge_method"] == "S256"
        assert len(asked["code_challenge"]) == 43
        assert "code_verifier" not in asked
        back = idp.authorize(url, "alice", stop_at=d.url)
        code = query(back)["code"]
        # The IdP refuses this code without the verifier, or with another one ...
        secret = d.settings.oidc_client_secret.get()
        with idp.client() as http:
            for extra in ({}, {"code_verifier": secrets.token_urlsafe(32)}):
                stolen = http.post(
                    f"{idp.issuer}/token",
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": f"{d.url}{CALLBACK}",
                        **extra,
                    },
                    auth=(client_id, secret),
                )
                assert (stolen.status_code, stolen.json()["error"]) == (400, "invalid_grant")
        # ... and the broker, which kept the verifier in this browser's flow, redeems it.
        flow = client.cookies[admin_page.FLOW_COOKIE]
        done = client.get(back)
        assert (done.status_code, done.headers["refresh"]) == (200, "0; url=/admin")
        assert client.get("/admin").status_code == 200
    for leaked in (code, secret, flow):
        assert leaked not in done.text


def test_key_login_is_off_with_sso_unless_opted_in(
    env: dict[str, str], sim: Simulator, idp: Idp
) -> None:
    with sso_deployment(env, sim, idp) as (d, _), d.client() as client:
        page = client.get("/admin/login")
        assert 'href="/admin/oidc/login"' in page.text
        assert 'name="key"' not in page.text
        refused = client.post("/admin/login", data={"key": d.caller_key})
        assert (refused.status_code, error_code(refused)) == (403, "key_login_disabled")
        assert admin_page.COOKIE not in client.cookies
    with (
        sso_deployment(env, sim, idp, BROKER_ADMIN_KEY_LOGIN="true") as (d, _),
        d.client() as client,
    ):
        page = client.get("/admin/login")
        assert 'href="/admin/oidc/login"' in page.text
        assert 'name="key"' in page.text
        assert client.post("/admin/login", data={"key": d.caller_key}).status_code == 303
        assert client.get("/admin").status_code == 200


def test_without_sso_the_key_login_is_as_before(env: dict[str, str]) -> None:
    settings = load_settings(env)
    assert settings.key_login_enabled
    assert not settings.oidc_enabled
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        page = client.get("/admin/login")
        assert 'name="key"' in page.text
        assert "/admin/oidc/login" not in page.text
        missing = client.get("/admin/oidc/login")
        assert (missing.status_code, error_code(missing)) == (404, "sso_not_configured")


def test_sso_settings_report_every_problem_at_once(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(
            {
                **env,
                "BROKER_OIDC_ISSUER": "http://idp.example",
                "BROKER_OIDC_SCOPES": "email",
                "BROKER_OIDC_ROLES": "admins=portals:admin+root",
                "BROKER_OIDC_REDIRECT_URI": "https://broker.example/elsewhere",
            }
        )
    problems = "\n".join(raised.value.problems)
    for expected in (
        "BROKER_OIDC_ISSUER: must be https",
        "BROKER_OIDC_CLIENT_ID: required",
        "BROKER_OIDC_CLIENT_SECRET: required",
        "BROKER_OIDC_SCOPES: must include openid",
        "BROKER_OIDC_ROLES: group 'admins': unknown role(s) root",
        "BROKER_OIDC_REDIRECT_URI: its path must be /admin/oidc/callback",
    ):
        assert expected in problems
    with pytest.raises(ConfigError, match="BROKER_OIDC_ISSUER: required"):
        load_settings({**env, "BROKER_OIDC_ROLES": "admins=portals:admin"})


def _with(url: str, **params: str) -> str:
    """``url`` with these query parameters replaced."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**query(url), **params})))


def _sealed_flow(settings: Settings, state: str, *, expires: int) -> str:
    """A genuine flow cookie for ``state`` (sealed by the broker's own key) but expired."""

    async def run() -> str:
        async with open_admin(settings) as svc:
            payload = {
                "state": state,
                "nonce": "n",
                "verifier": "v" * 43,
                "redirect_uri": "x",
                "expires": expires,
            }
            return await svc.keyring.seal(Purpose.SESSION, "oidc-flow", payload)

    return asyncio.run(run())


def test_flow_cookie_is_lax_scoped_and_short_lived(deployment: Deployment) -> None:
    with deployment.client() as client:
        begun = client.get("/admin/oidc/login")
    cookie = begun.headers["set-cookie"]
    assert cookie.startswith(f"{admin_page.FLOW_COOKIE}=")
    assert "Path=/admin/oidc" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "httponly" in cookie.lower()
    assert "Max-Age=600" in cookie
    assert re.search(r"[?&]nonce=[\w-]{43}", begun.headers["location"])


def test_the_idp_refusing_or_odd_callbacks_are_pages_not_errors(
    deployment: Deployment, idp: Idp
) -> None:
    with deployment.client() as client:
        state = query(start(client))["state"]
        flow = client.cookies[admin_page.FLOW_COOKIE]
        denied = client.get(CALLBACK, params={"state": state, "error": "access_denied"})
        assert (denied.status_code, error_code(denied)) == (400, "sso_denied")
        for params in ({"state": state, "code": "x", "extra": "1"}, {"state": [state, state]}):
            odd = client.get(CALLBACK, params=params)  # unknown or repeated parameters
            assert (odd.status_code, error_code(odd)) == (422, "invalid_request")
        client.cookies.set(admin_page.FLOW_COOKIE, flow + "A" * 3000)  # oversized
        huge = client.get(CALLBACK, params={"state": state, "code": "x"})
        assert (huge.status_code, error_code(huge)) == (400, "sso_state_invalid")
        assert "<script" not in huge.text
        assert huge.headers["cache-control"] == "no-store"


def test_check_config_reaches_the_issuer(env: dict[str, str], idp: Idp) -> None:
    sso = {
        "BROKER_OIDC_CLIENT_ID": "hubspot-token-broker",
        "BROKER_OIDC_CLIENT_SECRET": "s",
        "BROKER_OIDC_ROLES": "platform-admins=portals:admin",
    }
    trusted = {**env, **sso, "BROKER_CA_BUNDLE": str(idp.ca)}
    reports = [
        asyncio.run(probe_backends(load_settings({**trusted, "BROKER_OIDC_ISSUER": idp.issuer}))),
        # Not the issuer its discovery document names (a trailing slash is another issuer).
        asyncio.run(
            probe_backends(load_settings({**trusted, "BROKER_OIDC_ISSUER": f"{idp.issuer}/"}))
        ),
        # The IdP's certificate is from a CA only BROKER_CA_BUNDLE makes trusted.
        asyncio.run(
            probe_backends(load_settings({**env, **sso, "BROKER_OIDC_ISSUER": idp.issuer}))
        ),
    ]
    assert [r["oidc"] for r in reports] == ["ok", *["sso_provider_unavailable"] * 2]


@pytest.mark.parametrize(
    "limited",
    [
        {"BROKER_OIDC_APPS": "platform-admins=billing"},
        # alice is in "auditors" too, unlimited but granting another role: it must not
        # widen the apps of her portals:admin grant.
        {
            "BROKER_OIDC_ROLES": "platform-admins=portals:admin,auditors=callers:admin",
            "BROKER_OIDC_APPS": "platform-admins=billing",
        },
    ],
    ids=["one_group", "another_group_unlimited"],
)
def test_a_group_limited_to_other_apps_sees_and_manages_nothing_here(
    env: dict[str, str], sim: Simulator, idp: Idp, limited: dict[str, str]
) -> None:
    with sso_deployment(env, sim, idp, **limited) as (d, _), d.client() as client:
        assert sign_in(d, idp, client, "alice").status_code == 200
        page = client.get("/admin")
        assert page.status_code == 200
        assert f'id="portal-demo-{HUB}"' not in page.text  # the demo app is not theirs
        refused = client.post(
            f"/admin/portals/{HUB}/revoke",
            data={"app": "demo", "reason": "not mine", "csrf": csrf(client)},
        )
        assert (refused.status_code, error_code(refused)) == (403, "forbidden")
        assert d.token(HUB).status_code == 200


def test_an_unreachable_issuer_is_a_503_page(env: dict[str, str]) -> None:
    with socket.socket() as held:  # a loopback port nothing answers on
        held.bind(("127.0.0.1", 0))
        issuer = f"https://127.0.0.1:{held.getsockname()[1]}"
        settings = load_settings(
            {
                **env,
                "BROKER_OIDC_ISSUER": issuer,
                "BROKER_OIDC_CLIENT_ID": "c",
                "BROKER_OIDC_CLIENT_SECRET": "s",
                "BROKER_OIDC_ROLES": "platform-admins=portals:admin",
            }
        )
        with serve_app(create_app(settings)) as url, httpx.Client(base_url=url) as client:
            down = client.get("/admin/oidc/login")
    assert (down.status_code, error_code(down)) == (503, "sso_provider_unavailable")
    assert "retry-after" in down.headers
    assert admin_page.FLOW_COOKIE not in down.headers.get("set-cookie", "")


def test_sign_ins_begun_are_rate_limited_per_replica(deployment: Deployment) -> None:
    def begin(_: int) -> httpx.Response:
        with deployment.client() as client:
            return client.get("/admin/oidc/login")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(begin, range(60)))  # far beyond 2 s of burst at 5/s
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert {error_code(a) for a in refused} == {"sso_throttled"}
    assert all("retry-after" in a.headers for a in refused)
    assert {a.status_code for a in answers} == {303, 429}
