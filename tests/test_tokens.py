"""The whole path on real backends: install a portal through the OAuth flow, store its
tokens encrypted, serve them by Hub ID, refresh on expiry — against real PostgreSQL,
Valkey, OpenBao and the HubSpot simulator over HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from broker.core import tokens as tokens_module
from broker.core.models import PortalKey
from broker.errors import Undecryptable
from tests.helpers import Deploy, Deployment, decrypt, metric_value, sql

HUB = 4_400_001
OTHER_HUB = 4_400_002


@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(portals=(HUB, OTHER_HUB))


def test_install_serve_and_use_token_at_hubspot(deployment: Deployment) -> None:
    page = deployment.install(HUB)
    assert page.status_code == 200, page.text
    assert "Portal connected" in page.text
    assert str(HUB) in page.text

    response = deployment.token(HUB)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["hub_id"] == HUB
    assert body["app"] == "demo"
    assert body["token_type"] == "bearer"
    assert body["expires_in"] > 1700
    assert "crm.objects.contacts.read" in body["scopes"]

    contacts = httpx.get(
        f"{deployment.sim_url}/crm/v3/objects/contacts",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert contacts.status_code == 200, contacts.text
    assert contacts.json()["results"]

    counters = deployment.sim.counters()
    assert counters["token.authorization_code"] == 1
    assert counters.get("token.refresh_token", 0) == 0


def test_expired_token_is_refreshed_exactly_once(deployment: Deployment) -> None:
    deployment.install(HUB, access_token_ttl=3)
    first = deployment.token(HUB, min_ttl=0).json()
    deployment.sim.configure(access_token_ttl=1800)
    time.sleep(3.2)  # the installed token has expired (real time: the broker uses the DB clock)

    second = deployment.token(HUB, min_ttl=0)
    assert second.status_code == 200, second.text
    assert second.json()["access_token"] != first["access_token"]
    assert second.json()["expires_in"] > 1700
    third = deployment.token(HUB, min_ttl=0)
    assert third.json()["access_token"] == second.json()["access_token"]
    assert deployment.sim.counters()["token.refresh_token"] == 1


@pytest.mark.parametrize("rotate", [False, True], ids=["no-rotation", "rotation"])
def test_refresh_persists_the_returned_refresh_token(deployment: Deployment, rotate: bool) -> None:
    deployment.sim.configure(rotate_refresh_tokens=rotate)
    deployment.install(HUB, access_token_ttl=30)
    for _ in range(3):
        response = deployment.token(HUB, min_ttl=100)  # always stale: forces a refresh
        assert response.status_code == 200, response.text
    assert deployment.sim.counters()["token.refresh_token"] == 3
    versions = sql(deployment.settings, f"SELECT version FROM portals WHERE hub_id = {HUB}")
    assert versions[0]["version"] == 4  # install + three refreshes


def test_no_plaintext_token_in_postgres(deployment: Deployment) -> None:
    deployment.install(HUB, access_token_ttl=30)
    access = deployment.token(HUB, min_ttl=100).json()["access_token"]  # one refresh
    dump = sql(
        deployment.settings,
        "SELECT 'portals' AS t, to_jsonb(p)::text AS r FROM portals p "
        "UNION ALL SELECT 'journal', to_jsonb(j)::text FROM token_journal j "
        "UNION ALL SELECT 'audit', to_jsonb(a)::text FROM audit_events a "
        "UNION ALL SELECT 'events', to_jsonb(e)::text FROM events e",
    )
    assert {r["t"] for r in dump} >= {"portals", "journal"}
    text = "\n".join(r["r"] for r in dump)
    assert access not in text
    assert deployment.client_secret not in text
    portal = sql(deployment.settings, "SELECT refresh_ct, access_ct FROM portals")[0]
    assert portal["refresh_ct"].startswith("vault:v")
    assert portal["access_ct"].startswith("vault:v")
    refresh = asyncio.run(
        decrypt(deployment.settings, portal["refresh_ct"], PortalKey("demo", HUB), "refresh")
    )
    assert deployment.sim.is_refresh_token_valid(refresh)  # the stored one is the live one
    assert refresh not in text


def test_ciphertext_moved_to_another_portal_does_not_decrypt(deployment: Deployment) -> None:
    deployment.install(HUB)
    deployment.install(OTHER_HUB)
    [row] = sql(
        deployment.settings, f"SELECT access_ct, refresh_ct FROM portals WHERE hub_id = {HUB}"
    )

    settings = deployment.settings
    own = asyncio.run(decrypt(settings, row["access_ct"], PortalKey("demo", HUB), "access"))
    assert deployment.sim.access_token_info(own) is not None
    with pytest.raises(Undecryptable):
        asyncio.run(decrypt(settings, row["access_ct"], PortalKey("demo", OTHER_HUB), "access"))
    with pytest.raises(Undecryptable):  # same portal, wrong kind
        asyncio.run(decrypt(settings, row["refresh_ct"], PortalKey("demo", HUB), "access"))


def test_errors_are_problem_json(deployment: Deployment) -> None:
    deployment.install(HUB)
    with deployment.client() as client:
        cases = {
            "no key": (client.get(f"/v1/portals/{HUB}/token"), 401, "unauthenticated"),
            "bad key": (
                client.get(f"/v1/portals/{HUB}/token", headers={"Authorization": "Bearer hsb_x"}),
                401,
                "unauthenticated",
            ),
        }
    auth = {"Authorization": f"Bearer {deployment.caller_key}"}
    with deployment.client(headers=auth) as client:
        cases |= {
            "unknown portal": (client.get("/v1/portals/999/token"), 404, "portal_not_found"),
            "other app": (
                client.get(f"/v1/portals/{HUB}/token", params={"app": "other"}),
                403,
                "forbidden",
            ),
            "bad hub": (client.get("/v1/portals/abc/token"), 422, "invalid_request"),
            "NUL in app": (
                client.get(f"/v1/portals/{HUB}/token", params={"app": "a\x00b"}),
                422,
                "invalid_request",
            ),
            "zero hub": (client.get("/v1/portals/0/token"), 422, "invalid_request"),
            "huge hub": (client.get(f"/v1/portals/{2**64}/token"), 422, "invalid_request"),
            "min_ttl cap": (
                client.get(f"/v1/portals/{HUB}/token", params={"min_ttl": 99999}),
                422,
                "invalid_request",
            ),
            "min_ttl text": (
                client.get(f"/v1/portals/{HUB}/token", params={"min_ttl": "soon"}),
                422,
                "invalid_request",
            ),
            "no route": (client.get("/v2/nothing"), 404, "route_not_found"),
        }
    for name, (response, status, code) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json", name
        body = response.json()
        assert body["code"] == code, (name, body)
        assert body["status"] == status
        assert "Traceback" not in response.text
        assert deployment.caller_key not in response.text


def test_dead_grant_gives_409_and_stops_refreshing(deployment: Deployment) -> None:
    deployment.install(HUB, access_token_ttl=30)
    deployment.sim.kill_grant(HUB)
    first = deployment.token(HUB, min_ttl=100)
    assert first.status_code == 409, first.text
    assert first.json()["code"] == "needs_reauth"
    calls = deployment.sim.counters()["token.refresh_token"]
    again = deployment.token(HUB, min_ttl=100)
    assert again.status_code == 409
    assert deployment.sim.counters()["token.refresh_token"] == calls  # no more upstream calls
    [row] = sql(deployment.settings, f"SELECT state, last_error FROM portals WHERE hub_id={HUB}")
    assert (row["state"], row["last_error"]) == ("needs_reauth", "grant_dead")


def test_hubspot_down_with_expired_token_gives_503_retry_after(deployment: Deployment) -> None:
    deployment.install(HUB, access_token_ttl=1)
    time.sleep(1.2)
    deployment.sim.add_fault("token", status=503)
    response = deployment.token(HUB, min_ttl=0)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "hubspot_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def test_hubspot_down_with_valid_token_still_serves(deployment: Deployment) -> None:
    deployment.install(HUB, access_token_ttl=60)
    deployment.sim.add_fault("token", status=502)
    fresh = deployment.token(HUB, min_ttl=30)
    assert fresh.json()["degraded"] is False
    assert "broker-token-degraded" not in fresh.headers
    degraded_before = metric_value(deployment.url, "broker_tokens_degraded_total")
    response = deployment.token(HUB, min_ttl=120)  # wants a refresh, HubSpot fails
    assert response.status_code == 200, response.text
    assert 0 < response.json()["expires_in"] <= 60
    # The caller learns it got less than it asked for, and operators see it counted.
    assert response.json()["degraded"] is True
    assert response.headers["broker-token-degraded"] == "below-min-ttl"
    assert metric_value(deployment.url, "broker_tokens_degraded_total") == degraded_before + 1
    [row] = sql(deployment.settings, f"SELECT state FROM portals WHERE hub_id = {HUB}")
    assert row["state"] == "refresh_failing"


def test_a_wall_clock_step_back_does_not_extend_cached_tokens(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token cache runs on the monotonic clock: an NTP step of this machine's wall clock
    an hour back must not make a cached token look an hour younger."""
    deployment.install(HUB, access_token_ttl=600)
    first = deployment.token(HUB, min_ttl=0).json()
    assert first["expires_in"] <= 600

    class SteppedBack:
        monotonic = staticmethod(time.monotonic)
        perf_counter = staticmethod(time.perf_counter)

        @staticmethod
        def time() -> float:
            return time.time() - 3600

    monkeypatch.setattr(tokens_module, "time", SteppedBack)
    again = deployment.token(HUB, min_ttl=0).json()
    assert again["access_token"] == first["access_token"]  # served from the cache
    assert again["expires_in"] <= first["expires_in"]
    # 600 s > min_ttl 500 on the monotonic clock, still: no refresh, no degraded answer.
    assert deployment.token(HUB, min_ttl=500).json()["degraded"] is False


def test_portal_states_map_to_4xx(deployment: Deployment) -> None:
    deployment.install(HUB)
    deployment.install(OTHER_HUB)
    sql(deployment.settings, f"UPDATE portals SET state = 'revoked' WHERE hub_id = {HUB}")
    sql(deployment.settings, f"UPDATE portals SET state = 'quarantined' WHERE hub_id = {OTHER_HUB}")
    revoked = deployment.token(HUB, min_ttl=0)
    assert revoked.status_code == 410, revoked.text
    assert revoked.json()["code"] == "revoked"
    quarantined = deployment.token(OTHER_HUB, min_ttl=0)
    assert quarantined.status_code == 409, quarantined.text
    assert quarantined.json()["code"] == "quarantined"
