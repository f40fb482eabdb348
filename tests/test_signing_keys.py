"""Signing keys per purpose in Vault, rotated with an overlap, and install links that are
stored, listed and revoked — on a real broker, OpenBao and the simulator.

The drill rotates the session, install-link and fingerprint keys with the CLI while a caller
keeps fetching tokens: sessions and links made before keep working until the overlap ends
and are refused afterwards, and no token request fails."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from broker.app import open_admin
from broker.config import MAX_INSTALL_LINK_TTL
from broker.core.install_links import LinkClaims
from broker.core.signing import VERIFY_RATE, Purpose
from broker.dev.stack import BackendUrls, bootstrap_vault
from broker.errors import InstallLinkRejected, RateLimitedCaller
from broker.web import admin_page
from tests.helpers import Deploy, Deployment, audited, install_link, run_broker
from tests.links import assert_failed, sign, token_of
from tests.operator_page import ADMIN, csrf, error_code, login

HUB = 9_100_001
OVERLAP = 4.0  # seconds


@pytest.fixture
def deployment(deploy: Deploy, backends: BackendUrls) -> Deployment:
    # Signing keys of its own: the drill rotates them.
    prefix = f"drill-{secrets.token_hex(4)}-"
    bootstrap_vault(backends.vault_addr, backends.vault_token, signing_key_prefix=prefix)
    found = deploy(env={"BROKER_VAULT_SIGNING_KEY_PREFIX": prefix}, portals=(HUB,), roles=ADMIN)
    assert found.install(HUB, access_token_ttl=120).status_code == 200
    return found


def _env(d: Deployment) -> dict[str, str]:
    return {
        f"BROKER_{name.upper()}": value.get() if hasattr(value, "get") else str(value)
        for name, value in (
            ("database_url", d.settings.database_url),
            ("redis_url", d.settings.redis_url),
            ("vault_addr", d.settings.vault_addr),
            ("vault_token", d.settings.vault_token),
            ("vault_kv_prefix", d.settings.vault_kv_prefix),
            ("vault_signing_key_prefix", d.settings.vault_signing_key_prefix),
            ("hubspot_api_url", d.settings.hubspot_api_url),
            ("hubspot_app_url", d.settings.hubspot_app_url),
        )
    }


def _installs(link: str) -> int:
    """The status of starting an install from ``link`` (302 to HubSpot when accepted)."""
    with httpx.Client() as browser:
        return browser.get(link, headers={"Accept": "application/json"}).status_code


def test_link_lifetime_is_capped_whoever_signed_it(deployment: Deployment) -> None:
    """A genuinely signed link whose exp lies beyond the 30-day cap (from its iat, or from
    now) is refused: no never-expiring links even for whoever can sign."""
    now = int(time.time())
    too_long = [
        LinkClaims("il_forever", "demo", now, now + 10 * 365 * 86400),
        LinkClaims("il_backdated", "demo", now - 86400, now + MAX_INSTALL_LINK_TTL),
        LinkClaims("il_future_iat", "demo", now + 90 * 86400, now + 91 * 86400),
    ]
    for claims in too_long:
        token = sign(deployment.settings, claims)  # signed with the real key, and stored
        refused = httpx.get(
            f"{deployment.url}/oauth/install", params={"app": "demo", "link": token}
        )
        assert_failed(refused, 403, "install_link_invalid")
    fine = sign(deployment.settings, LinkClaims("il_fine", "demo", now, now + 600))
    accepted = httpx.get(f"{deployment.url}/oauth/install", params={"app": "demo", "link": fine})
    assert accepted.status_code == 302


def test_links_are_listed_and_revoked_by_id(deployment: Deployment) -> None:
    env = _env(deployment)
    first = run_broker(env, "--json", "apps", "install-link", "demo", "--ttl", "600")
    assert first.returncode == 0, first.stderr
    minted = json.loads(first.stdout)
    second = install_link(deployment.settings, "demo", hub_id=HUB)

    listed = run_broker(env, "--json", "install-links", "list")
    assert listed.returncode == 0, listed.stderr
    links = json.loads(listed.stdout)
    assert len(links) == 3  # and the fixture's install link
    assert minted["id"] in {link["id"] for link in links}
    by_id = {link["id"]: link for link in links}
    assert by_id[minted["id"]]["created_by"].startswith("cli")
    assert {link["created_by"] for link in links} >= {"test"}
    assert token_of(minted["url"]) not in listed.stdout
    assert token_of(second) not in listed.stdout

    revoked = run_broker(env, "--json", "install-links", "revoke", minted["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)[0]["revoked_at"] is not None
    with httpx.Client() as browser:
        page = browser.get(minted["url"])
        assert_failed(page, 403, "install_link_revoked")
        problem = browser.get(minted["url"], headers={"Accept": "application/json"})
        assert problem.headers["content-type"] == "application/problem+json"
        assert (problem.status_code, problem.json()["code"]) == (403, "install_link_revoked")
    assert _installs(second) == 302  # the other link is untouched

    active = json.loads(run_broker(env, "--json", "install-links", "list").stdout)
    assert minted["id"] not in {link["id"] for link in active}
    assert len(active) == 2
    everything = json.loads(run_broker(env, "--json", "install-links", "list", "--all").stdout)
    assert len(everything) == 3
    unknown = run_broker(env, "install-links", "revoke", "il_nope")
    assert unknown.returncode == 1
    assert "install_link_not_found" in unknown.stderr

    (event,) = audited(deployment.settings, "install_link.revoked")
    assert event["actor"].startswith("cli")
    assert event["detail"]["link_id"] == minted["id"]
    assert token_of(minted["url"]) not in json.dumps(event, default=str)


class _Caller(threading.Thread):
    """Fetches the portal's token in a loop; every status is kept."""

    def __init__(self, d: Deployment) -> None:
        super().__init__(daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.d.caller_key}"}
        with self.d.client(headers=headers) as client:
            while not self.stop.is_set():
                response = client.get(f"/v1/portals/{HUB}/token", params={"app": "demo"})
                self.statuses.append(response.status_code)
                time.sleep(0.005)


def _session_works(client: httpx.Client) -> bool:
    page = client.get("/admin")
    if page.status_code != 200:
        assert (page.status_code, page.headers["location"]) == (303, "/admin/login")
        return False
    return True


def test_key_rotation_drill(deployment: Deployment) -> None:
    d = deployment
    caller = _Caller(d)
    caller.start()
    try:
        with login(d) as old_session:
            old_cookie = old_session.cookies[admin_page.COOKIE]
            old_csrf = csrf(old_session)
            old_link = install_link(d.settings, "demo")
            assert _installs(old_link) == 302

            rotated = run_broker(
                _env(d), "--json", "keys", "rotate-signing", "all",
                "--overlap-hours", str(OVERLAP / 3600),
            )  # fmt: skip
            rotated_at = time.monotonic()
            assert rotated.returncode == 0, rotated.stderr
            versions = {k["purpose"]: k for k in json.loads(rotated.stdout)}
            assert {k: v["latest_version"] for k, v in versions.items()} == {
                "session": 2,
                "install-link": 2,
                "fingerprint": 2,
            }
            assert all(set(v["retiring"]) == {"1"} for v in versions.values())

            # The new versions sign at once.
            new_link = install_link(d.settings, "demo")
            assert token_of(new_link).split(".")[1] == "v2"
            with login(d) as new_session:
                assert new_session.cookies[admin_page.COOKIE].split(".")[1] == "v2"
                # A token loaded now is fingerprinted with the new key (a forced refresh).
                d.sim.configure(access_token_ttl=1800)
                fresh = d.token(HUB, min_ttl=1000)
                assert fresh.status_code == 200
                assert fresh.json()["expires_in"] > 1000  # refreshed: a new cache fill

                # Within the overlap the old session, its CSRF token and the old link work.
                assert _session_works(old_session)
                assert _installs(old_link) == 302
                logout = old_session.post("/admin/logout", data={"csrf": old_csrf})
                assert logout.status_code == 303, logout.text  # its CSRF token: accepted
                assert time.monotonic() - rotated_at < OVERLAP, "the checks took too long"

                time.sleep(max(0.0, OVERLAP + 0.5 - (time.monotonic() - rotated_at)))
                # The overlap is over: the old ones are refused, the new ones work.
                with d.client(headers={"Cookie": f"{admin_page.COOKIE}={old_cookie}"}) as c:
                    assert not _session_works(c)
                    refused = c.post("/admin/logout", data={"csrf": old_csrf})
                    assert (refused.status_code, error_code(refused)) == (401, "session_required")
                assert _installs(old_link) == 403
                assert _installs(new_link) == 302
                assert _session_works(new_session)
    finally:
        caller.stop.set()
        caller.join(10)
    assert len(caller.statuses) > 20
    assert set(caller.statuses) == {200}, "a token request failed during the rotation"
    # The token loaded after the rotation was fingerprinted with the new fingerprint key.
    token = fresh.json()["access_token"]

    async def fingerprints() -> tuple[set[str], str, str]:
        async with open_admin(d.settings) as svc:
            events = await svc.admin.audit(action="token.issued", limit=1000)
            by_version = [
                (
                    await svc.keyring.sign(Purpose.FINGERPRINT, "token", token.encode(), version=v)
                ).digest.hex()[:16]
                for v in (1, 2)
            ]
        return {e.detail["fingerprint"] for e in events}, by_version[0], by_version[1]

    time.sleep(0.7)  # the audit trail is flushed every 0.5 s
    audited, old_key, new_key = asyncio.run(fingerprints())
    assert new_key in audited
    assert old_key not in audited


def test_verifying_needs_the_right_purpose_and_version(deployment: Deployment) -> None:
    """A link signed with another purpose's key, or naming a version the key does not
    have, is refused by the signer itself (before any stored row is looked at)."""

    async def run() -> None:
        async with open_admin(deployment.settings) as svc:
            now = int(time.time())
            token = await svc.install_links.signer.sign(LinkClaims("il_x", "demo", now, now + 60))
            body, _, mac = token.partition(".")
            for forged in (f"{body}.v9{mac[1:]}", f"{body}.{mac}x", f"{body}."):
                with pytest.raises(InstallLinkRejected):
                    await svc.install_links.signer.verify(forged, app="demo")
            assert (await svc.install_links.signer.verify(token, app="demo")).id == "il_x"

    asyncio.run(run())


def test_unjudged_macs_are_limited_and_verdicts_remembered(deployment: Deployment) -> None:
    """Install links and session cookies arrive unauthenticated and each new MAC costs a
    Transit call: Vault's verdict is remembered (a flood of one forged link costs one call),
    and MACs Vault has not judged are limited per replica (429 ``verify_throttled``)."""

    async def run() -> None:
        async with open_admin(deployment.settings) as svc:
            keyring = svc.install_links.signer._keyring
            calls = 0
            real_verify = keyring._macs.verify

            async def counting(*args: Any, **kwargs: Any) -> list[bool]:
                nonlocal calls
                calls += 1
                return await real_verify(*args, **kwargs)

            keyring._macs.verify = counting  # type: ignore[method-assign]
            now = int(time.time())
            token = await svc.install_links.signer.sign(LinkClaims("il_y", "demo", now, now + 60))
            body, _, mac = token.partition(".")
            forged = f"{body}.{mac[:-2]}AA"
            for _ in range(500):  # the same forged link, again and again
                with pytest.raises(InstallLinkRejected):
                    await svc.install_links.signer.verify(forged, app="demo")
            assert calls == 1
            for _ in range(20):  # the genuine one, too: judged once
                assert (await svc.install_links.signer.verify(token, app="demo")).id == "il_y"
            assert calls == 2
            started, codes = time.monotonic(), Counter[str]()
            for i in range(2_000):  # distinct forgeries: Vault is asked at a bounded rate
                try:
                    await svc.install_links.signer.verify(f"{body}.v1.{i:024d}", app="demo")
                except (RateLimitedCaller, InstallLinkRejected) as refused:
                    codes[refused.code] += 1
            throttled = codes["verify_throttled"]
            elapsed = time.monotonic() - started
            budget = 2 * VERIFY_RATE + VERIFY_RATE * elapsed
            assert calls - 2 <= budget, (calls, elapsed)
            assert throttled > 0
            assert throttled + codes["install_link_invalid"] == 2_000
            # The genuine link was judged before the flood: it still opens during it.
            assert (await svc.install_links.signer.verify(token, app="demo")).id == "il_y"

    asyncio.run(run())
