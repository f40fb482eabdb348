"""Inputs that used to end in a 500 or put a stranger's words on our pages, on a real broker:
Unicode digits where an integer is expected, JSON nested past the decoder's recursion limit,
bodies of any size, and query parameter names made of sentences. Every answer is a 4xx
problem (or error page) with a stable code, and none repeats what was sent."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY

from broker.adapters.postgres.audit import PostgresAudit
from broker.adapters.postgres.pool import Database
from broker.core.models import PortalKey, Role
from broker.core.ports import AuditFilter
from tests.helpers import Deploy, Deployment

HUB = 3_400_001
MAX_JSON_BODY = 16 * 1024  # broker.web.params.MAX_JSON_BODY
SENTENCE = "Your account is locked call 555 0100 now"


@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(installed=(HUB,), roles=(Role.TOKENS_READ.value, Role.PORTALS_ADMIN.value))


def _authed(d: Deployment) -> httpx.Client:
    return d.client(headers={"Authorization": f"Bearer {d.caller_key}"})


def test_unicode_digits_are_a_422_not_a_500(deployment: Deployment) -> None:
    with _authed(deployment) as client:
        for path, params in [
            ("/v1/portals/%C2%B2/token", {}),  # "²": str.isdigit() says yes, int() says no
            ("/v1/portals/%D9%A3/token", {}),  # Arabic-Indic three
            (f"/v1/portals/{HUB}/token", {"min_ttl": "\u00b9\u00b2"}),
            (f"/v1/portals/{HUB}/token", {"user_id": "\uff11"}),  # fullwidth one
            ("/v1/admin/portals/%C2%B2", {}),
            ("/v1/admin/portals", {"limit": "\u00b3"}),
        ]:
            response = client.get(path, params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "invalid_request"
        assert client.get(f"/v1/portals/{HUB}/token").status_code == 200


def test_admin_bodies_are_bounded_and_deep_nesting_is_a_422(deployment: Deployment) -> None:
    revoke = f"/v1/admin/portals/{HUB}/revoke"
    links = "/v1/admin/apps/demo/install-links"
    json_type = {"Content-Type": "application/json"}
    with _authed(deployment) as client:
        for path in (revoke, f"/v1/admin/portals/{HUB}/quarantine", links):
            for deep in ("[" * 100_000 + "]" * 100_000, '{"a":' * 5_000 + "1" + "}" * 5_000):
                response = client.post(path, content=deep[: MAX_JSON_BODY - 1], headers=json_type)
                assert response.status_code == 422, (path, response.text)
                assert response.json()["code"] == "invalid_request"
            big = b'{"reason": "' + b"x" * (MAX_JSON_BODY + 1) + b'"}'
            response = client.post(path, content=big, headers=json_type)
            assert response.status_code == 413, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "body_too_large"

            def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
                for _ in range(64):
                    yield b" " * 4096

            response = client.post(path, content=chunks(), headers=json_type)
            assert response.status_code == 413, (path, response.text)
            assert response.json()["code"] == "body_too_large"
        # Bodies within the limit still work.
        assert client.post(links, json={"ttl": 60}).status_code == 200
        done = client.post(revoke, params={"app": "demo"}, json={"reason": "test"})
        assert done.status_code == 200, done.text


def test_unknown_parameter_names_are_not_echoed(deployment: Deployment) -> None:
    """A link can carry any parameter name; the page says a parameter was unknown, and which
    ones the route accepts, but never repeats the name."""
    hostile = {SENTENCE: "1", "<b>also this</b>": "x"}
    with deployment.client() as browser, _authed(deployment) as api:
        answers = {
            "admin": browser.get("/admin", params=hostile),
            "login": browser.get("/admin/login", params=hostile),
            "install html": browser.get("/oauth/install", params={"app": "demo", **hostile}),
            "install json": browser.get(
                "/oauth/install",
                params={"app": "demo", **hostile},
                headers={"Accept": "application/json"},
            ),
            "token api": api.get(f"/v1/portals/{HUB}/token", params=hostile),
            "admin api": api.get("/v1/admin/portals", params=hostile),
        }
    for name, response in answers.items():
        assert response.status_code == 422, (name, response.text)
        text = response.text
        for word in ("locked", "555", "also this", "also%20this", "call"):
            assert word not in text, (name, word, text)
        assert "invalid_request" in text, name


def test_nul_characters_are_a_422_and_change_nothing(deployment: Deployment) -> None:
    """PostgreSQL stores no U+0000 in text or jsonb: a string carrying one used to reach it
    (a revoke reason in the outbox event) and end in a 500 after the refusal was decided."""
    with _authed(deployment) as client:
        for path, body in [
            (f"/v1/admin/portals/{HUB}/quarantine", {"reason": "held\u0000"}),
            (f"/v1/admin/portals/{HUB}/revoke", {"reason": "\u0000gone"}),
            ("/v1/admin/apps/demo/install-links", {"return_to": "https://x.example/\u0000"}),
        ]:
            response = client.post(path, json=body)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["code"] == "invalid_request"
            assert "\u0000" not in response.text
        # Nesting the decoder takes but a recursive walk for U+0000 would not (it did: a 500).
        deep = '{"reason":' + "[" * 900 + '"\\u0000"' + "]" * 900 + "}"
        response = client.post(
            f"/v1/admin/portals/{HUB}/quarantine",
            content=deep,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        for params in ({"app": "demo\u0000"}, {"state": "active\u0000"}):
            response = client.get("/v1/admin/portals", params=params)
            assert response.status_code == 422, (params, response.text)
        assert client.get(f"/v1/admin/portals/{HUB}").json()["state"] == "active"
        assert client.get(f"/v1/portals/{HUB}/token").status_code == 200


def test_times_and_cursors_out_of_range_are_a_422(deployment: Deployment) -> None:
    """Valid ISO 8601 that leaves the calendar once in UTC, and a forged cursor with an id
    past bigint, used to overflow in the database driver: a 500."""
    forged = base64.urlsafe_b64encode(
        json.dumps({"at": "2026-01-01T00:00:00+00:00", "id": 10**20}).encode()
    ).decode()
    with _authed(deployment) as client:
        for params in (
            {"since": "0001-01-01T00:00:00+01:00"},
            {"until": "9999-12-31T23:59:59-01:00"},
            {"cursor": forged},
        ):
            response = client.get("/v1/admin/audit", params=params)
            assert (response.status_code, response.json()["code"]) == (422, "invalid_request")


async def test_a_nul_reaching_the_audit_trail_does_not_stop_it(database_url: str) -> None:
    """Whatever way a U+0000 gets in (an identity provider's subject, say), the audit batch
    holding it is written with a replacement character (PostgreSQL refused the batch: every
    event in it was lost), and the flushes after it go on."""
    db = await Database.connect(database_url, min_size=1, max_size=2, timeout=5)
    try:
        audit = PostgresAudit(db)
        audit.record("admin.test", actor="oidc:a\u0000b", reason=["x\u0000"], n=1)
        assert await audit.flush() == 1
        audit.record("admin.test", actor="next", reason="plain")
        assert await audit.flush() == 1
        rows = await audit.search(AuditFilter(action="admin.test"), after=None, limit=5)
        assert [(r.actor, r.detail["reason"]) for r in rows] == [
            ("next", "plain"),
            ("oidc:a\ufffdb", ["x\ufffd"]),
        ]
    finally:
        await db.close()


async def test_a_row_postgresql_refuses_costs_only_itself(database_url: str) -> None:
    """An audit row PostgreSQL refuses (a hub_id past bigint here) is dropped and counted;
    the other events of its batch are written (the whole batch used to be lost)."""
    db = await Database.connect(database_url, min_size=1, max_size=2, timeout=5)
    try:
        audit = PostgresAudit(db)
        dropped = metric_sample("broker_audit_dropped_total")
        audit.record("admin.batch", actor="first")
        audit.record("admin.batch", actor="refused", key=PortalKey("demo", 2**70))
        audit.record("admin.batch", actor="last")
        assert await audit.flush() == 2
        rows = await audit.search(AuditFilter(action="admin.batch"), after=None, limit=5)
        assert sorted(r.actor for r in rows) == ["first", "last"]
        assert metric_sample("broker_audit_dropped_total") == dropped + 1
    finally:
        await db.close()


def metric_sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0
