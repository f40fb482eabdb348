"""The HubSpot gateway (issue 16): forwarding with the portal's token, path grants, limits,
a 401 answered by one refresh, revocation on every replica, no token anywhere, and the
per-portal budget (queue, 429 with Retry-After, the budget routes)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from broker.app.asgi import create_app
from broker.app.services import open_admin
from broker.config import Settings, load_settings
from broker.core.models import PortalKey
from broker.dev.simulator import Simulator
from tests.helpers import (
    Deployment,
    admin_key,
    deployed,
    grant_gateway,
    metric_value,
    run_broker,
    serve_app,
)

HUB = 6100
CONTACTS = f"/v1/portals/{HUB}/hubspot/crm/v3/objects/contacts"


def call(d: Deployment, path: str = CONTACTS, method: str = "GET", **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {d.caller_key}", **kw.pop("headers", {})}
    with d.client() as client:
        return client.request(method, path, headers=headers, **kw)


def portal_token(d: Deployment) -> str:
    answer = d.token(HUB)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def test_forwards_with_the_portal_token_within_path_grants(
    settings: Settings,
    sim: Simulator,
    sim_url: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        # No grant yet: refused, nothing sent.
        refused = call(d, params={"limit": "2"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "hubspot_path_forbidden"
        grant_gateway(settings, None, ["/crm/v3/objects/contacts"])
        sent_before = sim.counters().get("contacts", 0)
        answer = call(
            d,
            params={"limit": "2", "app": "demo", "properties": "email"},
            headers={"Cookie": "session=secret", "Connection": "keep-alive, X-Custom"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        body = answer.json()
        assert len(body["results"]) == 2
        assert set(body["results"][0]["properties"]) >= {"email"}
        assert "firstname" not in body["results"][0]["properties"]  # the query went through
        assert answer.headers["x-hubspot-ratelimit-max"] == "110"
        assert sim.counters()["contacts"] == sent_before + 1
        # Another prefix is not granted: 403 before anything is sent.
        other = call(d, f"/v1/portals/{HUB}/hubspot/crm/v3/objects/companies")
        assert other.status_code == 403
        assert other.json()["code"] == "hubspot_path_forbidden"
        assert call(d, f"/v1/portals/{HUB}/hubspot/crm/v3/objects/contactsx").status_code == 403
        # Dot segments would leave the granted prefix at HubSpot's end: refused, not sent.
        escape = f"/v1/portals/{HUB}/hubspot/crm/v3/objects/contacts/%2e%2e/%2e%2e/owners"
        dots = call(d, escape)
        assert dots.status_code == 422, dots.text
        assert dots.json()["code"] == "invalid_request"
        # A space or CR decoded in the path is encoded again: it cannot end the request
        # line (HubSpot answers its 404 for that path, not 400 for a broken request line).
        odd = call(d, f"/v1/portals/{HUB}/hubspot/crm/v3/objects/contacts/a%20b%0Dc")
        assert odd.status_code == 404, odd.text
        assert sim.counters()["contacts"] == sent_before + 1
        # HubSpot's own errors come back as HubSpot sent them.
        bad = call(d, params={"limit": "1000"})
        assert bad.status_code == 400
        assert bad.json()["category"] == "VALIDATION_ERROR"
        # Our own limits: problem+json with stable codes.
        big = call(d, method="POST", content=b"x" * (settings.gateway_max_body + 1))
        assert big.status_code == 413
        assert big.json()["code"] == "body_too_large"
        token = portal_token(d)
        for response in (answer, other, bad, big):
            assert token not in response.text
            assert token not in str(response.headers)
            assert response.headers["x-request-id"]
        assert answer.headers["x-request-id"] != other.headers["x-request-id"]
        _answers_as_every_route(d)
    out, err = capfd.readouterr()
    assert "health.ready" in out + err + caplog.text  # the broker's log was captured
    for text in (out, err, caplog.text):
        assert token not in text


def _answers_as_every_route(d: Deployment) -> None:
    """Served in front of the Starlette app, the gateway answers as its routes do: the
    caller's request id echoed and in problems, 405 with ``Allow``, U+0000 refused, the
    latency observed under the ``api`` route label."""
    counted = dict(route="api", status_class="2xx")
    before = metric_value(d.url, "broker_http_request_duration_seconds_count", **counted)
    echoed = call(d, headers={"X-Request-ID": "gw-req-1"})
    assert echoed.status_code == 200
    assert echoed.headers["x-request-id"] == "gw-req-1"
    after = metric_value(d.url, "broker_http_request_duration_seconds_count", **counted)
    assert after == before + 1
    denied = call(d, headers={"Authorization": "Bearer nope", "X-Request-ID": "gw-req-2"})
    assert denied.status_code == 401
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.headers["x-request-id"] == "gw-req-2"
    assert denied.json()["request_id"] == "gw-req-2"
    options = call(d, method="OPTIONS")
    assert options.status_code == 405
    assert options.json()["code"] == "method_not_allowed"
    assert set(options.headers["allow"].split(", ")) == {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
    }
    assert options.headers["x-request-id"]
    assert call(d, params={"q": "a\x00b"}).json()["code"] == "invalid_request"
    assert call(d, method="HEAD").status_code == 200


def test_a_401_is_answered_by_one_refresh_and_one_retry(
    settings: Settings, sim: Simulator, sim_url: str
) -> None:
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        grant_gateway(settings, None, ["/"])
        assert call(d).status_code == 200
        refreshes = sim.counters().get("token.refresh_token", 0)
        sim.advance_clock(4000)  # HubSpot now says the token we hold expired: 401
        answer = call(d)
        assert answer.status_code == 200, answer.text
        assert sim.counters().get("token.refresh_token", 0) == refreshes + 1
        assert call(d).status_code == 200  # the new token is the one used from now on
        assert sim.counters().get("token.refresh_token", 0) == refreshes + 1


def test_a_revoked_portal_fails_within_a_second_on_every_replica(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    settings = load_settings({**env, "BROKER_INVALIDATION_POLL_SECONDS": "30"})
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        grant_gateway(settings, None, ["/crm/"])
        with serve_app(create_app(settings)) as second:
            replicas = [d.url, second]
            headers = {"Authorization": f"Bearer {d.caller_key}"}
            for url in replicas:  # both serve it from their caches
                assert httpx.get(url + CONTACTS, headers=headers).status_code == 200

            async def revoke() -> None:
                async with open_admin(settings) as svc:
                    await svc.operations.revoke(PortalKey("demo", HUB), reason="t", actor="t")

            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, revoke()).result()
            revoked = time.monotonic()
            pending = set(replicas)
            while pending and time.monotonic() - revoked < 1.0:
                for url in list(pending):
                    answer = httpx.get(url + CONTACTS, headers=headers)
                    if answer.status_code == 410:
                        assert answer.json()["code"] == "revoked"
                        pending.discard(url)
            assert not pending, f"still forwarding after 1 s: {pending}"


def test_the_budget_queues_then_answers_429_itself(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    settings = load_settings(
        {**env, "BROKER_BUDGET_PER_TEN_SECONDS": "4", "BROKER_BUDGET_MAX_WAIT": "0.5"}
    )
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        grant_gateway(settings, None, ["/crm/"])
        budget = f"/v1/portals/{HUB}/budget"
        read = call(d, budget)
        assert read.status_code == 200
        assert read.json()["remaining"] == 4
        assert call(d, budget, method="POST", json={"used": 1}).json()["used"] == 1
        assert call(d, budget, method="POST", json={"used": 0}).status_code == 422
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: call(d), range(6)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 200, 200, 429, 429, 429], statuses
        refused = next(a for a in answers if a.status_code == 429)
        assert refused.json()["code"] == "portal_budget_exhausted"
        assert int(refused.headers["retry-after"]) >= 1
        assert call(d, budget).json()["remaining"] == 0
        # HubSpot itself never said 429: the gateway kept within the portal's budget.
        assert sim.counters().get("contacts", 0) == 3


def test_path_grants_by_cli_and_management_api_without_escalation(
    env: dict[str, str], settings: Settings, sim: Simulator, sim_url: str
) -> None:
    with deployed(settings, sim, sim_url) as d:
        admin = admin_key(settings, "ops")  # every role, no HubSpot paths
        headers = {"Authorization": f"Bearer {admin}"}
        with d.client() as client:
            listed = client.get("/v1/admin/callers", headers=headers).json()["callers"]
        target = next(c["name"] for c in listed if c["name"].startswith("svc-"))
        url = f"/v1/admin/callers/{target}/gateway"
        with d.client() as client:
            refused = client.post(url, json={"hubspot_paths": ["/crm/"]}, headers=headers)
            assert refused.status_code == 403, refused.text
            bad = client.post(url, json={"hubspot_paths": ["/crm/../x"]}, headers=headers)
            assert bad.status_code == 422
            done = run_broker(env, "callers", "gateway", "ops", "--path", "/")
            assert done.returncode == 0, done.stderr
            time.sleep(0.3)  # the caller change reaches the replica over Redis
            granted = client.post(
                url, json={"hubspot_paths": ["/crm/"], "gateway_weight": 3}, headers=headers
            )
            assert granted.status_code == 200, granted.text
            assert granted.json()["hubspot_paths"] == ["/crm/"]
            assert granted.json()["gateway_weight"] == 3
        assert call(d, f"/v1/portals/{HUB}/hubspot/crm/v3/objects/contacts").status_code == 404


def test_without_redis_each_replica_keeps_half_the_budget(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    settings = load_settings(
        {**env, "BROKER_BUDGET_PER_TEN_SECONDS": "4", "BROKER_BUDGET_MAX_WAIT": "0.3"}
    )
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        grant_gateway(settings, None, ["/crm/"])
        with socket.socket() as unused:  # a port nothing listens on: Redis is down
            unused.bind(("127.0.0.1", 0))
            dead = f"redis://127.0.0.1:{unused.getsockname()[1]}/0"
        alone = load_settings({**env, **_budget_env(settings), "BROKER_REDIS_URL": dead})
        with serve_app(create_app(alone)) as url:
            headers = {"Authorization": f"Bearer {d.caller_key}"}
            with ThreadPoolExecutor(4) as pool:
                answers = list(
                    pool.map(
                        lambda _: httpx.get(url + CONTACTS, headers=headers, timeout=30), range(4)
                    )
                )
        assert sorted(a.status_code for a in answers) == [200, 200, 429, 429]
        assert sim.counters()["contacts"] == 2


def _budget_env(settings: Settings) -> dict[str, str]:
    return {
        "BROKER_BUDGET_PER_TEN_SECONDS": str(settings.budget_per_ten_seconds),
        "BROKER_BUDGET_MAX_WAIT": str(settings.budget_max_wait),
    }


def test_budget_reports_refuse_bad_bodies_with_problems(
    settings: Settings, sim: Simulator, sim_url: str
) -> None:
    """What a service reports to ``POST /budget`` is checked before anything is counted: a
    body nested too deep, not JSON, or not ``{"used": n}`` is a 422, never a 500; 1.0 is 1."""
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        url = f"/v1/portals/{HUB}/budget"
        for body in (b"[" * 5_000 + b"]" * 5_000, b"{", b'{"used": 0}', b'{"used": 1.5}'):
            refused = call(d, url, method="POST", content=body)
            assert refused.status_code == 422, (body[:20], refused.text)
            assert refused.json()["code"] == "invalid_request"
        counted = call(d, url, method="POST", json={"used": 1.0})
        assert counted.status_code == 200, counted.text
        assert counted.json()["used"] == 1
