"""The operator page on a real broker and the simulator: login (admin keys only, cookie
flags), the portal list (never a token), CSRF and Origin checks, forged sessions, revoke,
quarantine and release, and the whole flow in a real headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import httpx

from broker.app import open_admin
from broker.config import Settings
from broker.dev.simulator import Simulator
from broker.web import admin_page
from tests.helpers import Deployment, register
from tests.operator_page import HUB, browser, csrf, error_code, login, shot


def state(client: httpx.Client) -> str:
    match = re.search(
        rf'id="portal-demo-{HUB}">.*?class="state (\w+)"', client.get("/admin").text, re.DOTALL
    )
    assert match is not None
    return match.group(1)


def test_login_admits_only_admin_keys_and_sets_a_strict_cookie(
    admin_deployment: Deployment, sim: Simulator
) -> None:
    _, _, reader = register(
        admin_deployment.settings, sim, f"{admin_deployment.url}/oauth/callback", slug="demo"
    )
    with admin_deployment.client() as client:
        form = client.get("/admin/login")
        assert form.status_code == 200
        assert form.headers["content-security-policy"] == admin_page.CSP
        assert form.headers["x-frame-options"] == "DENY"
        assert form.headers["referrer-policy"] == "same-origin"
        assert form.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in admin_page.CSP
        assert "frame-ancestors 'none'" in admin_page.CSP
        assert "<script" not in form.text

        refused = client.post("/admin/login", data={"key": reader})
        assert (refused.status_code, error_code(refused)) == (403, "forbidden")
        assert "set-cookie" not in refused.headers
        wrong = client.post("/admin/login", data={"key": reader[:-4] + "AAAA"})
        assert (wrong.status_code, error_code(wrong)) == (401, "unauthenticated")

        ok = client.post("/admin/login", data={"key": admin_deployment.caller_key})
    assert (ok.status_code, ok.headers["location"]) == (303, "/admin")
    cookie = ok.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")}
    assert cookie.startswith(f"{admin_page.COOKIE}=")
    assert {"httponly", "samesite", "path", "max-age"} <= set(flags)
    assert flags["samesite"].strip().lower() == "samesite=strict"
    assert flags["path"].strip() == "Path=/admin"
    assert flags["max-age"].strip() == "Max-Age=1800"
    assert "secure" not in flags  # plain http here; set over https
    # hsb_<16 hex id>_<43-char secret>; the secret itself may contain "_".
    key_id, secret = admin_deployment.caller_key[4:20], admin_deployment.caller_key[21:]
    assert len(secret) == 43
    assert secret not in cookie
    assert (
        key_id
        not in base64.urlsafe_b64decode(cookie.split("=", 1)[1].split(".")[0] + "==").decode()
    )  # not even the key id: name, expiry and a random session id only


def test_the_list_shows_portals_and_never_a_token(admin_deployment: Deployment) -> None:
    token = admin_deployment.token(HUB).json()["access_token"]
    with login(admin_deployment) as client:
        page = client.get("/admin")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == admin_page.CSP
        assert page.headers["cache-control"] == "no-store"
        assert f"<strong>{HUB}</strong>" in page.text
        assert state(client) == "active"
        assert "crm.objects.contacts.read" in page.text
        for secret in (
            token,
            "vault:v",
            admin_deployment.caller_key,
            admin_deployment.client_secret,
        ):
            assert secret not in page.text
        assert f'id="portal-demo-{HUB}"' not in client.get("/admin?state=revoked").text
        assert client.get("/admin?state=active").text.count(f"<strong>{HUB}</strong>") == 1
        bogus = client.get("/admin?state=gone")
        assert (bogus.status_code, error_code(bogus)) == (422, "invalid_request")


def test_revoke_needs_this_sessions_csrf_token(admin_deployment: Deployment) -> None:
    url = f"/admin/portals/{HUB}/revoke"
    form = {"app": "demo", "reason": "customer left"}
    with login(admin_deployment) as other:
        foreign = csrf(other)  # valid, but bound to another session
    with login(admin_deployment) as client:
        for token in (None, "", foreign, "x" * 43, "é"):
            data = form if token is None else {**form, "csrf": token}
            refused = client.post(url, data=data)
            assert (refused.status_code, error_code(refused)) == (403, "csrf_invalid")
        assert state(client) == "active"
        assert admin_deployment.token(HUB).status_code == 200

        done = client.post(url, data={**form, "csrf": csrf(client)})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == f"/admin?done=revoked&portal=demo%2F{HUB}"
        after = client.get(done.headers["location"])
        assert f"Portal <code>demo/{HUB}</code> is revoked" in after.text
        assert state(client) == "revoked"
    gone = admin_deployment.token(HUB)
    assert (gone.status_code, gone.json()["code"]) == (410, "revoked")


def test_a_forged_session_goes_back_to_login(admin_deployment: Deployment) -> None:
    with login(admin_deployment) as client:
        real = client.cookies[admin_page.COOKIE]
        token = csrf(client)
    body, _, mac = real.partition(".")  # mac: v<key version>.<base64url>
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert payload["kind"] == "caller"

    def reseal(**changes: object) -> str:  # the payload changed, under the old MAC
        text = json.dumps({**payload, **changes}, separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=") + f".{mac}"

    version, _, digest = mac.partition(".")
    forgeries = [
        reseal(expires=payload["expires"] + 86_400),  # a longer life
        reseal(kind="oidc", name="oidc:mallory", roles=["portals:admin"]),  # no live check
        f"{body}.{mac[:-2]}AA",
        f"{body}.v{int(version[1:]) + 1}.{digest}",  # a key version that does not exist
        f"{body}.{digest}",  # the format before signing keys had versions
        "garbage",
        "\xe9.\xe9",
        "",
    ]
    for forged in forgeries:
        cookie = f"{admin_page.COOKIE}={forged}".encode("latin-1")
        with admin_deployment.client(headers={"Cookie": cookie}) as client:
            page = client.get("/admin")
            assert (page.status_code, page.headers["location"]) == (303, "/admin/login")
            refused = client.post(
                f"/admin/portals/{HUB}/revoke",
                data={"app": "demo", "reason": "forged", "csrf": token},
            )
            assert (refused.status_code, error_code(refused)) == (401, "session_required")
    with admin_deployment.client() as anonymous:
        assert anonymous.get("/admin").headers["location"] == "/admin/login"
    assert admin_deployment.token(HUB).status_code == 200


def test_a_post_from_another_origin_is_refused(admin_deployment: Deployment) -> None:
    with login(admin_deployment) as client:
        data = {"app": "demo", "reason": "csrf attempt", "csrf": csrf(client)}
        url = f"/admin/portals/{HUB}/revoke"
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            refused = client.post(url, data=data, headers=headers)
            assert (refused.status_code, error_code(refused)) == (403, "origin_mismatch")
        relogin = client.post(
            "/admin/login",
            data={"key": admin_deployment.caller_key},
            headers={"Origin": "https://evil.example"},
        )
        assert relogin.status_code == 403
        assert state(client) == "active"
        same = client.post(url, data=data, headers={"Origin": admin_deployment.url})
        assert same.status_code == 303
    assert admin_deployment.token(HUB).status_code == 410


def test_quarantine_release_and_errors_as_pages(admin_deployment: Deployment) -> None:
    with login(admin_deployment) as client:
        token = csrf(client)
        base = f"/admin/portals/{HUB}"
        held = client.post(f"{base}/quarantine", data={"app": "demo", "reason": "x", "csrf": token})
        assert held.headers["location"] == f"/admin?done=quarantined&portal=demo%2F{HUB}"
        assert state(client) == "quarantined"
        assert admin_deployment.token(HUB).json()["code"] == "quarantined"
        released = client.post(f"{base}/release", data={"app": "demo", "csrf": token})
        assert released.status_code == 303
        assert state(client) == "active"
        assert admin_deployment.token(HUB).status_code == 200

        no_reason = client.post(f"{base}/revoke", data={"app": "demo", "csrf": token})
        assert (no_reason.status_code, error_code(no_reason)) == (422, "invalid_request")
        nul = {"app": "demo", "reason": "gone\u0000", "csrf": token}
        nul_reason = client.post(f"{base}/revoke", data=nul)  # PostgreSQL stores no U+0000
        assert (nul_reason.status_code, error_code(nul_reason)) == (422, "invalid_request")
        assert state(client) == "active"
        missing = client.post(
            "/admin/portals/999/revoke", data={"app": "demo", "reason": "x", "csrf": token}
        )
        assert (missing.status_code, error_code(missing)) == (404, "portal_not_found")
        elsewhere = client.post(
            f"{base}/release", data={"app": "other", "csrf": token}
        )  # the caller is limited to the demo app
        assert (elsewhere.status_code, error_code(elsewhere)) == (403, "forbidden")
        for query in ("done=<script>", "done=revoked&portal=<b>x</b>", "flash=hello"):
            spoof = client.get(f"/admin?{query}")
            assert spoof.status_code == 422
            assert "<script>" not in spoof.text
            assert "<b>x" not in spoof.text

        admin_deployment.sim.add_fault("revoke", status=503)
        form = {"app": "demo", "reason": "incident", "csrf": token}
        pending = client.post(f"{base}/revoke", data=form)
        assert pending.headers["location"].startswith("/admin?done=revoke_pending&")
        assert "retrying the revoke" in client.get(pending.headers["location"]).text
        again = client.post(f"{base}/revoke", data=form)
        assert again.headers["location"].startswith("/admin?done=already_revoked&")
        assert state(client) == "revoked"


def test_disabling_the_caller_or_logging_out_ends_the_session(admin_deployment: Deployment) -> None:
    with login(admin_deployment) as client:
        token = csrf(client)
        out = client.post("/admin/logout", data={"csrf": token})
        assert (out.status_code, out.headers["location"]) == (303, "/admin/login")
        assert admin_page.COOKIE not in client.cookies
        assert client.get("/admin").status_code == 303
    with login(admin_deployment) as client:
        name = re.search(r"Signed in as <strong>([^<]+)</strong>", client.get("/admin").text)
        assert name is not None
        disable(admin_deployment.settings, name.group(1))
        assert client.get("/admin").headers["location"] == "/admin/login"


def disable(settings: Settings, name: str) -> None:
    async def run() -> None:
        async with open_admin(settings) as ctx:
            await ctx.callers.disable(name, actor="test")

    asyncio.run(run())


def test_an_operator_revokes_a_portal_in_a_real_browser(
    admin_deployment: Deployment, chromium: str
) -> None:
    row = f"#portal-demo-{HUB}"
    with browser(chromium) as b:
        page = b.page
        page.goto(f"{admin_deployment.url}/admin/login")
        shot(page, "login")
        page.fill("#key", admin_deployment.caller_key)
        page.click("button[type=submit]")
        page.wait_for_url(f"{admin_deployment.url}/admin")
        assert page.inner_text(f"{row} .state") == "active"
        page.fill(f"{row} input[name=reason]", "browser drill")
        shot(page, "portals")
        page.click(f"{row} button.danger")
        page.wait_for_url(f"{admin_deployment.url}/admin?done=revoked*")
        assert page.inner_text(f"{row} .state") == "revoked"
        assert f"Portal demo/{HUB} is revoked" in page.inner_text(".flash")
        # The stylesheet applied: served by the broker, allowed by the CSP (style-src 'self').
        badge = page.eval_on_selector(f"{row} .state", "e => getComputedStyle(e).backgroundColor")
        assert badge == "rgb(229, 231, 235)"
        shot(page, "revoked")
        assert b.problems == []
    assert admin_deployment.token(HUB).status_code == 410
