"""The operator API on a real broker: roles, revoke (idempotent; HubSpot down → retried until
confirmed), quarantine and release, forced refresh, install links, and the audit trail."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from broker.app import create_app, open_admin
from broker.config import Settings, load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from tests.helpers import Deploy, Deployment, audited, register, run_broker, serve_app, sql

HUB = 3_300_001
ADMIN = (Role.TOKENS_READ.value, Role.PORTALS_ADMIN.value)


@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(installed=(HUB,), roles=ADMIN)


def admin(d: Deployment, method: str, path: str, **kwargs: object) -> httpx.Response:
    with d.client(headers={"Authorization": f"Bearer {d.caller_key}"}) as client:
        return client.request(method, f"/v1/admin/portals{path}", **kwargs)  # type: ignore[arg-type]


def test_a_token_reader_cannot_administer(deployment: Deployment, sim: Simulator) -> None:
    _, _, reader = register(
        deployment.settings, sim, f"{deployment.url}/oauth/callback", slug="demo"
    )
    with deployment.client(headers={"Authorization": f"Bearer {reader}"}) as client:
        for method, path in [("GET", ""), ("GET", f"/{HUB}"), ("POST", f"/{HUB}/release")]:
            response = client.request(method, f"/v1/admin/portals{path}")
            assert response.status_code == 403, (path, response.text)
            assert response.json()["code"] == "forbidden"


def test_list_and_show_never_carry_tokens(deployment: Deployment) -> None:
    token = deployment.token(HUB).json()["access_token"]
    listed = admin(deployment, "GET", "")
    shown = admin(deployment, "GET", f"/{HUB}", params={"app": "demo"})
    assert listed.status_code == shown.status_code == 200
    assert [p["hub_id"] for p in listed.json()["portals"]] == [HUB]
    assert shown.json()["state"] == "active"
    for text in (listed.text, shown.text):
        assert token not in text
        assert "vault:v" not in text


def test_revoke_is_immediate_idempotent_and_reaches_hubspot(deployment: Deployment) -> None:
    assert deployment.token(HUB).status_code == 200  # cached in the replica
    first = admin(deployment, "POST", f"/{HUB}/revoke", json={"reason": "customer left"})
    assert first.status_code == 200, first.text
    assert (first.json()["state"], first.json()["upstream"]) == ("revoked", "revoked")
    assert deployment.sim.counters()["revoke"] == 1
    gone = deployment.token(HUB)
    assert gone.status_code == 410
    assert gone.json()["code"] == "revoked"
    again = admin(deployment, "POST", f"/{HUB}/revoke", json={"reason": "twice"})
    assert again.json()["upstream"] == "already_revoked"
    assert deployment.sim.counters()["revoke"] == 1
    [row] = sql(deployment.settings, "SELECT refresh_ct, access_ct FROM portals")
    assert (row["refresh_ct"], row["access_ct"]) == (None, None)  # crypto-shredded
    events = sql(deployment.settings, "SELECT type FROM events WHERE type = 'portal.revoked'")
    assert len(events) == 1


def test_revoke_with_hubspot_down_is_retried_until_confirmed(deployment: Deployment) -> None:
    deployment.sim.add_fault("revoke", status=503)
    response = admin(deployment, "POST", f"/{HUB}/revoke", json={"reason": "incident"})
    assert response.status_code == 200, response.text
    assert response.json()["upstream"] == "pending"
    assert deployment.token(HUB).status_code == 410  # locally revoked at once
    assert len(sql(deployment.settings, "SELECT id FROM pending_revocations")) == 1
    deployment.sim.clear_faults()
    sql(deployment.settings, "UPDATE pending_revocations SET next_attempt_at = now()")
    deadline = time.monotonic() + 15  # the retrier runs every 5 s
    while sql(deployment.settings, "SELECT id FROM pending_revocations"):
        assert time.monotonic() < deadline, "the upstream revoke was never retried"
        time.sleep(0.2)
    assert deployment.sim.counters()["revoke"] >= 2


def test_quarantine_and_release(deployment: Deployment) -> None:
    assert deployment.token(HUB).status_code == 200
    held = admin(deployment, "POST", f"/{HUB}/quarantine", json={"reason": "suspicious"})
    assert held.json()["state"] == "quarantined"
    blocked = deployment.token(HUB)
    assert (blocked.status_code, blocked.json()["code"]) == (409, "quarantined")
    released = admin(deployment, "POST", f"/{HUB}/release")
    assert released.json()["state"] == "active"
    assert deployment.token(HUB).status_code == 200
    no_reason = admin(deployment, "POST", f"/{HUB}/quarantine", json={"why": "x"})
    assert no_reason.status_code == 422


def test_forced_refresh_is_rate_limited(deployment: Deployment) -> None:
    before = deployment.token(HUB).json()["access_token"]
    first = admin(deployment, "POST", f"/{HUB}/refresh")
    assert first.status_code == 200, first.text
    assert first.json()["version"] == 2
    assert deployment.sim.counters()["token.refresh_token"] == 1
    assert deployment.token(HUB).json()["access_token"] != before  # cache was dropped
    second = admin(deployment, "POST", f"/{HUB}/refresh")
    assert (second.status_code, second.json()["code"]) == (409, "refreshed_recently")
    assert deployment.sim.counters()["token.refresh_token"] == 1


def test_install_link_and_unknown_portal(deployment: Deployment) -> None:
    link = admin(deployment, "POST", f"/{HUB}/install-link")
    assert link.json()["url"].startswith(f"{deployment.url}/oauth/install?app=demo&link=")
    assert datetime.fromisoformat(link.json()["expires_at"]) > datetime.now(UTC)
    assert httpx.get(link.json()["url"]).status_code == 302
    missing = admin(deployment, "POST", "/999/install-link")
    assert (missing.status_code, missing.json()["code"]) == (404, "portal_not_found")


def test_audit_trail_via_cli(deployment: Deployment, env: dict[str, str]) -> None:
    token = deployment.token(HUB, min_ttl=0).json()["access_token"]
    admin(deployment, "POST", f"/{HUB}/quarantine", json={"reason": "audit me"})
    time.sleep(1.0)  # the audit writer flushes every 0.5 s
    result = run_broker(env, "--json", "audit", "--hub", str(HUB))
    assert result.returncode == 0, result.stderr
    actions = [e["action"] for e in json.loads(result.stdout)]
    assert {"token.issued", "portal.installed", "portal.quarantined"} <= set(actions)
    issued = next(e for e in json.loads(result.stdout) if e["action"] == "token.issued")
    assert len(issued["detail"]["fingerprint"]) == 16
    assert token not in result.stdout
    revoke = run_broker(env, "--json", "portals", "revoke", str(HUB), "--reason", "cli drill")
    assert revoke.returncode == 0, revoke.stderr
    assert json.loads(revoke.stdout)["state"] == "revoked"


def test_caller_key_rotation_with_overlap(env: dict[str, str], sim: Simulator) -> None:
    settings = load_settings({**env, "BROKER_CALLER_CACHE_SECONDS": "0.5"})
    with serve_app(create_app(settings)) as url:
        client_id, secret, old = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(
            settings,
            sim,
            sim_url="",
            url=url,
            app="demo",
            client_id=client_id,
            client_secret=secret,
            caller_key=old,
        )
        sim.add_portal(HUB)
        assert d.install(HUB).status_code == 200
        name = json.loads(run_broker(env, "--json", "callers", "list").stdout)[0]["name"]
        rotated = run_broker(env, "--json", "callers", "rotate", name, "--overlap-hours", "0.0008")
        assert rotated.returncode == 0, rotated.stderr
        new = json.loads(rotated.stdout)["key"]
        assert new != old
        for key in (old, new):  # both work during the ~3 s overlap
            with d.client(headers={"Authorization": f"Bearer {key}"}) as client:
                assert client.get(f"/v1/portals/{HUB}/token").status_code == 200
        time.sleep(3.5)  # overlap over (and the 0.5 s caller cache expired)
        with d.client(headers={"Authorization": f"Bearer {old}"}) as client:
            refused = client.get(f"/v1/portals/{HUB}/token")
        assert (refused.status_code, refused.json()["code"]) == (401, "unauthenticated")
        with d.client(headers={"Authorization": f"Bearer {new}"}) as client:
            assert client.get(f"/v1/portals/{HUB}/token").status_code == 200


def test_app_install_links(deployment: Deployment) -> None:
    def create(name: str, **scope: object) -> str:
        async def run() -> str:
            async with open_admin(deployment.settings) as svc:
                new = await svc.callers.create(
                    name, roles=[Role.PORTALS_ADMIN.value], actor="test", **scope
                )
                return new.secret

        return asyncio.run(run())

    def post(key: str, app: str, body: object = None) -> httpx.Response:
        with deployment.client(headers={"Authorization": f"Bearer {key}"}) as client:
            return client.post(f"/v1/admin/apps/{app}/install-links", json=body)

    made = post(deployment.caller_key, "demo", {"ttl": 600})
    assert made.status_code == 200, made.text
    assert made.json()["url"].startswith(f"{deployment.url}/oauth/install?app=demo&link=")
    left = datetime.fromisoformat(made.json()["expires_at"]) - datetime.now(UTC)
    assert 590 <= left.total_seconds() <= 600
    assert httpx.get(made.json()["url"]).status_code == 302
    for body in ({"ttl": 0}, {"return_to": "https://evil.example/"}, {"hub_id": HUB}):
        refused = post(deployment.caller_key, "demo", body)
        assert (refused.status_code, refused.json()["code"]) == (422, "invalid_request"), body
    assert post(deployment.caller_key, "other-app").status_code == 403  # not its app
    scoped = create("scoped-admin", apps=["demo"], hub_ids=[HUB])
    assert post(scoped, "demo").json()["code"] == "forbidden"  # limited to one portal
    everything = create("all-apps-admin")
    missing = post(everything, "nope")
    assert (missing.status_code, missing.json()["code"]) == (404, "app_not_found")
    time.sleep(1.0)  # the audit writer flushes every 0.5 s
    minted = [
        e for e in audited(deployment.settings, "install_link.created") if e["actor"] != "test"
    ]
    assert [e["actor"] for e in minted] == [deployment_caller(deployment.settings)]  # only 200
    assert made.json()["url"].split("link=")[1] not in json.dumps(minted, default=str)


def deployment_caller(settings: Settings) -> str:
    found = sql(settings, "SELECT name FROM callers WHERE name LIKE 'svc-%'")
    return str(found[0]["name"])


def test_a_revoke_during_a_slow_refresh_is_not_undone_by_its_fallback(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    """A caller's refresh times out on a slow HubSpot and falls back to the row it read
    *before* an operator revoked the portal. Nothing of it is served after the revoke
    returned: not to that caller (the state is read again after an invalidation during the
    load), not to the next (the fallback never lands in the cache: an invalidation generation
    per portal; the in-flight load is no longer joined after the invalidation)."""
    settings = load_settings({**env, "BROKER_HUBSPOT_TIMEOUT": "2"})
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(
            settings, sim, f"{url}/oauth/callback", slug="demo", roles=ADMIN
        )
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        sim.add_portal(HUB)
        assert d.install(HUB, access_token_ttl=600).status_code == 200
        token = d.token(HUB).json()["access_token"]
        sim.configure(latency_ms={"token": 4000})  # longer than BROKER_HUBSPOT_TIMEOUT

        slow: list[httpx.Response] = []
        refreshing = threading.Thread(target=lambda: slow.append(d.token(HUB, min_ttl=1500)))
        refreshing.start()
        time.sleep(0.5)  # the refresh is waiting on HubSpot
        revoked = admin(d, "POST", f"/{HUB}/revoke", json={"reason": "offboarded"})
        assert revoked.status_code == 200, revoked.text
        after_revoke = d.token(HUB)
        refreshing.join(30)
        later = [d.token(HUB) for _ in range(5)]

    assert (after_revoke.status_code, after_revoke.json()["code"]) == (410, "revoked")
    # The slow caller itself: its refresh timed out and would have fallen back to the token
    # it read before the revoke; the state is read again first, and it is revoked.
    assert (slow[0].status_code, slow[0].json()["code"]) == (410, "revoked"), slow[0].text
    assert token not in slow[0].text
    assert [r.status_code for r in later] == [410] * 5
