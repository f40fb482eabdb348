"""Authorization matrix: every role by every endpoint by the caller's own portal and another
portal. Every denied cell is a 403 that changes nothing; every allowed cell works."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.app import create_app, open_admin
from broker.config import Settings, load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from tests.helpers import Deploy, Deployment, install_link, register, serve_app, sql

SCOPES = ("crm.objects.contacts.read", "oauth")

# One portal per endpoint for the allowed cells (some actions change the portal), one the
# callers are never granted.
ENDPOINTS = {
    "token": ("GET", "/v1/portals/{hub}/token", None),
    "list": ("GET", "/v1/admin/portals", None),
    "show": ("GET", "/v1/admin/portals/{hub}", None),
    "refresh": ("POST", "/v1/admin/portals/{hub}/refresh", None),
    "quarantine": ("POST", "/v1/admin/portals/{hub}/quarantine", {"reason": "matrix"}),
    "release": ("POST", "/v1/admin/portals/{hub}/release", None),
    "install_link": ("POST", "/v1/admin/portals/{hub}/install-link", None),
    # Same path for "own" and "other": an app-wide link is for callers limited to no
    # portals, and these callers are limited to theirs (test_admin covers the allowed cell).
    "app_install_link": ("POST", "/v1/admin/apps/demo/install-links", None),
    "revoke": ("POST", "/v1/admin/portals/{hub}/revoke", {"reason": "matrix"}),
}
OWN = {name: 2_200_001 + i for i, name in enumerate(ENDPOINTS)}
OTHER = 2_299_999
ROLES = [r.value for r in Role]


def allowed(role: str, endpoint: str, own: bool) -> bool:
    if endpoint == "token":
        return role == Role.TOKENS_READ.value and own
    if endpoint == "list":
        return role == Role.PORTALS_ADMIN.value  # filtered to the caller's portals
    if endpoint == "app_install_link":
        return False
    return role == Role.PORTALS_ADMIN.value and own


@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(installed=(*OWN.values(), OTHER))


def _caller(settings: Settings, role: str) -> str:
    async def create() -> str:
        async with open_admin(settings) as svc:
            new = await svc.callers.create(
                f"matrix-{role.replace(':', '-')}",
                roles=[role],
                apps=["demo"],
                hub_ids=list(OWN.values()),
                actor="test",
            )
            return new.secret

    return asyncio.run(create())


def test_authorization_matrix(deployment: Deployment) -> None:
    keys = {role: _caller(deployment.settings, role) for role in ROLES}
    cells = 0
    # Denied cells first, so the portals they target are untouched for the allowed ones.
    # The list has no portal in its path: it has one cell per role.
    order = sorted(
        (
            (role, name, own)
            for role in ROLES
            for name in ENDPOINTS
            for own in (False, True)
            if not (name == "list" and not own)
        ),
        key=lambda cell: allowed(*cell),
    )
    for role, name, own in order:
        method, path, body = ENDPOINTS[name]
        hub = OWN[name] if own else OTHER
        with httpx.Client(base_url=deployment.url, timeout=30) as client:
            response = client.request(
                method,
                path.format(hub=hub),
                params={"app": "demo"},
                json=body,
                headers={"Authorization": f"Bearer {keys[role]}"},
            )
        cell = (role, name, "own" if own else "other")
        if allowed(role, name, own):
            assert response.status_code == 200, (cell, response.text)
            if name == "list":
                hubs = {p["hub_id"] for p in response.json()["portals"]}
                assert hubs == set(OWN.values()), cell  # never the other portal
        else:
            assert response.status_code == 403, (cell, response.text)
            assert response.json()["code"] == "forbidden"
        cells += 1
    assert cells == len(ROLES) * (len(ENDPOINTS) * 2 - 1)
    # The other portal was never touched by any denied call.
    other = deployment.token(OTHER)
    assert other.status_code == 200
    assert deployment.sim.refreshes_by_hub().get(OTHER, 0) == 0


# --- the management API: every route x every role x own/other resource ---------------------
#: A caller of each role limited to app "demo" acts on "demo" (own) and "other" (other).
#: Global routes (keys, retention) belong to no app: "own" is then a caller of the role
#: limited to nothing, "other" the caller limited to "demo". Lists have one cell per role,
#: answered with "demo"'s things only.
MANAGED_HUB, FOREIGN_HUB = 2_310_001, 2_310_002
LISTS = {
    "apps": ("GET", "/v1/admin/apps", Role.APPS_ADMIN),
    "callers": ("GET", "/v1/admin/callers", Role.CALLERS_ADMIN),
    "install_links": ("GET", "/v1/admin/install-links?all=true", Role.PORTALS_ADMIN),
    "audit": ("GET", "/v1/admin/audit?limit=1000", Role.PORTALS_ADMIN),
    "webhook_events": ("GET", "/v1/admin/webhooks/events?limit=500", Role.PORTALS_ADMIN),
}
SCOPED = {
    "app_put": ("PUT", "/v1/admin/apps/{app}", Role.APPS_ADMIN),
    "app_retire": ("POST", "/v1/admin/apps/{app}/retire", Role.APPS_ADMIN),
    "app_unretire": ("POST", "/v1/admin/apps/{app}/unretire", Role.APPS_ADMIN),
    "caller_create": ("POST", "/v1/admin/callers", Role.CALLERS_ADMIN),
    "caller_rotate": ("POST", "/v1/admin/callers/{target}/rotate", Role.CALLERS_ADMIN),
    "caller_disable": ("POST", "/v1/admin/callers/{target}/disable", Role.CALLERS_ADMIN),
    "link_revoke": ("POST", "/v1/admin/install-links/{link}/revoke", Role.PORTALS_ADMIN),
    "redeliver": ("POST", "/v1/admin/webhooks/events/{event}/redeliver", Role.PORTALS_ADMIN),
}
GLOBAL = {
    "transit_status": ("GET", "/v1/admin/keys/transit", Role.APPS_ADMIN),
    "transit_rewrap": ("POST", "/v1/admin/keys/transit/rewrap", Role.APPS_ADMIN),
    "signing_status": ("GET", "/v1/admin/keys/signing", Role.APPS_ADMIN),
    "signing_rotate": ("POST", "/v1/admin/keys/signing/rotate", Role.APPS_ADMIN),
    "retention_sweep": ("POST", "/v1/admin/retention/sweep", Role.APPS_ADMIN),
}


@dataclass
class Managed:
    deployment: Deployment
    apps: dict[str, tuple[str, str]]  # slug -> (client_id, redirect_uri)
    links: dict[str, str]  # own/other -> an install link id
    events: dict[str, int]  # own/other -> an event id
    limited: dict[str, str] = field(default_factory=dict)  # role -> key
    unlimited: dict[str, str] = field(default_factory=dict)


#: Webhook-Id of every delivery the receiver got.
RECEIVED: list[str] = []


async def _ok(request: Request) -> Response:
    RECEIVED.append(request.headers["webhook-id"])
    return Response(status_code=204)


@pytest.fixture
def managed(env: dict[str, str], sim: Simulator, sim_url: str) -> Iterator[Managed]:
    RECEIVED.clear()
    with serve_app(Starlette(routes=[Route("/hook", _ok, methods=["POST"])])) as receiver:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        settings = load_settings(
            {**env, "BROKER_WEBHOOK_URLS": f"{receiver}/hook", "BROKER_WEBHOOK_SECRET": secret}
        )
        with serve_app(create_app(settings)) as url:
            callback = f"{url}/oauth/callback"
            client_id, secret_, key = register(settings, sim, callback, slug="demo")
            other_id, other_secret, _ = register(settings, sim, callback, slug="other")
            d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret_, key)
            sim.add_portal(MANAGED_HUB)
            assert d.install(MANAGED_HUB).status_code == 200
            other = Deployment(settings, sim, sim_url, url, "other", other_id, other_secret, key)
            sim.add_portal(FOREIGN_HUB)
            assert other.install(FOREIGN_HUB).status_code == 200
            links = {
                "own": install_link(settings, "demo").split("link=")[0],
                "other": install_link(settings, "other").split("link=")[0],
            }
            m = Managed(
                d,
                {"demo": (client_id, callback), "other": (other_id, callback)},
                _ids(settings, "SELECT id, app FROM install_links WHERE created_by = 'test'"),
                _ids(settings, "SELECT id, app FROM events WHERE type = 'portal.installed'"),
            )
            assert set(links) == set(m.links)
            _seed_callers(m)
            _wait_delivered(settings)
            yield m


def _ids(settings: Settings, query: str) -> dict[str, Any]:
    found = sql(settings, query)
    return {
        "own": next(r["id"] for r in found if r["app"] == "demo"),
        "other": next(r["id"] for r in found if r["app"] == "other"),
    }


def _seed_callers(m: Managed) -> None:
    async def seed() -> None:
        async with open_admin(m.deployment.settings) as svc:
            for role in ROLES:
                slug = role.replace(":", "-")
                limited = await svc.callers.create(
                    f"m-{slug}", roles=[role], apps=["demo"], actor="test"
                )
                unlimited = await svc.callers.create(f"u-{slug}", roles=[role], actor="test")
                m.limited[role], m.unlimited[role] = limited.secret, unlimited.secret
                for action in ("rotate", "disable"):  # targets of the caller routes
                    await svc.callers.create(
                        f"t-{action}-own-{slug}", roles=[role], apps=["demo"], actor="test"
                    )
                    await svc.callers.create(f"t-{action}-other-{slug}", roles=[role], actor="test")

    asyncio.run(seed())


def _wait_delivered(settings: Settings) -> None:
    deadline = time.monotonic() + 20
    query = "SELECT count(*) AS n FROM webhook_deliveries WHERE delivered_at IS NULL"
    while sql(settings, query)[0]["n"] or not sql(settings, "SELECT id FROM webhook_deliveries"):
        assert time.monotonic() < deadline, "the webhook receiver never got the events"
        time.sleep(0.2)


def _request(m: Managed, name: str, role: str, own: bool) -> tuple[str, str, Any]:
    method, path, _ = {**SCOPED, **GLOBAL}[name]
    side = "own" if own else "other"
    slug = role.replace(":", "-")
    app = "demo" if own else "other"
    path = path.format(
        app=app,
        target=f"t-{name.removeprefix('caller_')}-{side}-{slug}",
        link=m.links[side],
        event=m.events[side],
    )
    body: Any = None
    if name == "app_put":
        client_id, redirect = m.apps[app]
        body = {"client_id": client_id, "redirect_uri": redirect, "scopes": list(SCOPES)}
    elif name == "caller_create":
        body = {"name": f"c-{side}-{slug}", "roles": [role], "apps": ["demo"] if own else None}
    elif name == "signing_rotate":
        body = {"purposes": ["fingerprint"], "overlap_seconds": 3600}
    elif name == "transit_rewrap":
        body = {"batch": 10}
    return method, path, body


def _snapshot(m: Managed) -> dict[str, Any]:
    settings = m.deployment.settings
    tables = {
        "apps": "SELECT slug, client_id, retired_at, updated_at FROM apps",
        "callers": "SELECT name, key_id, previous_key_id, disabled_at, roles, apps FROM callers",
        "links": "SELECT id, revoked_at FROM install_links",
        "deliveries": "SELECT id, attempts, delivered_at, next_attempt_at FROM webhook_deliveries",
        "events": "SELECT id, delivered_at FROM events",
        "retirements": "SELECT * FROM signing_key_retirements",
        "portals": "SELECT id, state, version FROM portals",
    }
    found = {k: sorted(map(tuple, sql(settings, q))) for k, q in tables.items()}

    async def versions() -> list[int]:
        async with open_admin(settings) as svc:
            return [s.latest_version for s in await svc.keyring.status()]

    found["signing_versions"] = asyncio.run(versions())
    return found


def _cells() -> list[tuple[str, str, bool]]:
    cells = [(role, name, True) for role in ROLES for name in LISTS]
    cells += [
        (role, name, own) for role in ROLES for name in [*SCOPED, *GLOBAL] for own in (True, False)
    ]
    return cells


def _allowed(role: str, name: str, own: bool) -> bool:
    _, _, needed = {**LISTS, **SCOPED, **GLOBAL}[name]
    return role == needed.value and own


def test_management_authorization_matrix(managed: Managed) -> None:
    cells = _cells()
    denied = [c for c in cells if not _allowed(*c)]
    allowed = [c for c in cells if _allowed(*c)]
    assert len(allowed) == len(LISTS) + len(SCOPED) + len(GLOBAL)  # one role each
    before = _snapshot(managed)
    with httpx.Client(base_url=managed.deployment.url, timeout=30) as client:
        for role, name, own in denied:
            response = _send(client, managed, role, name, own)
            assert response.status_code == 403, ((role, name, own), response.text)
            assert response.json()["code"] == "forbidden", (role, name, own)
        assert _snapshot(managed) == before  # no denied cell changed anything
        for role, name, own in allowed:  # the dict order: retire before unretire
            response = _send(client, managed, role, name, own)
            assert response.status_code in (200, 201), ((role, name), response.text)
            _check_allowed(managed, name, response.json())
    assert managed.deployment.token(MANAGED_HUB).status_code == 200  # demo still works


def _send(client: httpx.Client, m: Managed, role: str, name: str, own: bool) -> httpx.Response:
    if name in LISTS:
        method, path, _ = LISTS[name]
        key, body = m.limited[role], None
    else:
        method, path, body = _request(m, name, role, own)
        key = m.unlimited[role] if name in GLOBAL and own else m.limited[role]
    return client.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})


def _check_allowed(m: Managed, name: str, body: dict[str, Any]) -> None:
    """An allowed cell did its work, and a list showed "demo"'s things only."""
    if name == "apps":
        assert [a["slug"] for a in body["apps"]] == ["demo"]
    elif name == "callers":
        assert body["callers"]
        assert all(c["apps"] == ["demo"] for c in body["callers"]), body
        assert all(c["roles"] == [Role.CALLERS_ADMIN.value] for c in body["callers"])
    elif name == "install_links":
        assert {x["app"] for x in body["links"]} == {"demo"}
    elif name == "audit":
        assert body["events"]
        assert {e["app"] for e in body["events"]} == {"demo"}
    elif name == "webhook_events":
        assert {e["app"] for e in body["events"]} == {"demo"}
        assert all(d["state"] == "delivered" for e in body["events"] for d in e["deliveries"])
    elif name == "app_retire":
        assert body["retired_at"] is not None
    elif name == "app_unretire":
        assert body["retired_at"] is None
    elif name in ("caller_create", "caller_rotate"):
        assert body["key"].startswith("hsb_")
    elif name == "caller_disable":
        assert body["disabled"] is True
    elif name == "link_revoke":
        assert body["revoked_at"] is not None
    elif name == "redeliver":
        assert {d["state"] for d in body["deliveries"]} == {"pending"}
    elif name == "signing_rotate":
        assert any(k["retiring"] for k in body["keys"])
    elif name == "retention_sweep":
        assert "audit_events" in body["deleted"]
    else:
        assert body


def test_a_callers_admin_grants_nothing_beyond_itself(managed: Managed) -> None:
    """No escalation: roles, apps, hubs, a rate or an expiry beyond the acting callers:admin are
    refused (403, nothing created), so is managing a wider caller (whose new key would be
    its own); within its scope it works."""
    soon = datetime.now(UTC) + timedelta(days=1)

    async def admin() -> tuple[str, str]:
        async with open_admin(managed.deployment.settings) as svc:
            scoped = await svc.callers.create(
                "scoped-admin",
                roles=[Role.CALLERS_ADMIN.value, Role.TOKENS_READ.value],
                apps=["demo"],
                hub_ids=[MANAGED_HUB],
                expires_at=soon,
                rate_limit=500.0,
                actor="test",
            )
            wide = await svc.callers.create("wide-reader", apps=["demo"], actor="test")
            return scoped.secret, wide.secret

    key, wide_key = asyncio.run(admin())
    within = {
        "roles": [Role.TOKENS_READ.value],
        "apps": ["demo"],
        "hub_ids": [MANAGED_HUB],
        "expires_at": (soon - timedelta(hours=1)).isoformat(),
        "rate_limit": 500.0,
    }
    beyond = {
        "higher rate": {"rate_limit": 5000.0},
        "no rate limit": {"rate_limit": None},
        "role": {"roles": [Role.PORTALS_ADMIN.value]},
        "apps": {"apps": ["demo", "other"]},
        "every app": {"apps": None},
        "hub": {"hub_ids": [FOREIGN_HUB]},
        "every hub": {"hub_ids": None},
        "no expiry": {"expires_at": None},
        "later expiry": {"expires_at": (soon + timedelta(days=1)).isoformat()},
    }
    with managed.deployment.client(headers={"Authorization": f"Bearer {key}"}) as client:
        for case, change in beyond.items():
            body = {"name": f"esc-{case.replace(' ', '-')}", **within, **change}
            refused = client.post(
                "/v1/admin/callers", json={k: v for k, v in body.items() if v is not None}
            )
            assert refused.status_code == 403, (case, refused.text)
        made = client.post("/v1/admin/callers", json={"name": "esc-ok", **within})
        assert made.status_code == 201, made.text
        before = sql(
            managed.deployment.settings, "SELECT key_id FROM callers WHERE name = 'wide-reader'"
        )
        for action in ("rotate", "disable"):
            wider = client.post(f"/v1/admin/callers/wide-reader/{action}")
            assert wider.status_code == 403, (action, wider.text)
        after = sql(
            managed.deployment.settings, "SELECT key_id FROM callers WHERE name = 'wide-reader'"
        )
        assert before == after
        listed = {c["name"] for c in client.get("/v1/admin/callers").json()["callers"]}
        assert listed == {"esc-ok", "scoped-admin"}  # never the wider reader
        assert client.post("/v1/admin/callers/esc-ok/rotate").status_code == 200
    names = {r["name"] for r in sql(managed.deployment.settings, "SELECT name FROM callers")}
    assert not {n for n in names if n.startswith("esc-")} - {"esc-ok"}
    with managed.deployment.client(headers={"Authorization": f"Bearer {wide_key}"}) as client:
        assert client.get(f"/v1/portals/{MANAGED_HUB}/token").status_code == 200


def test_redelivery_sends_the_same_event_again(managed: Managed) -> None:
    """A delivered event, redelivered: the receiver gets it once more with the same
    Webhook-Id (it is the same event), and the listing shows it delivered again."""
    event = managed.events["own"]
    assert RECEIVED.count(f"evt_{event}") == 1
    key = managed.limited[Role.PORTALS_ADMIN.value]
    with managed.deployment.client(headers={"Authorization": f"Bearer {key}"}) as client:
        path = f"/v1/admin/webhooks/events/{event}/redeliver"
        assert client.post(path, json={"endpoint": "0" * 16}).status_code == 422
        assert client.post("/v1/admin/webhooks/events/999999/redeliver").status_code == 404
        again = client.post(path)
        assert again.status_code == 200, again.text
        assert again.json()["webhook_id"] == f"evt_{event}"
        _wait_delivered(managed.deployment.settings)
        assert RECEIVED.count(f"evt_{event}") == 2
        listed = client.get("/v1/admin/webhooks/events", params={"app": "demo"}).json()
        [shown] = [e for e in listed["events"] if e["id"] == event]
        [delivery] = shown["deliveries"]
        assert (delivery["state"], delivery["attempts"], delivery["host"]) == (
            "delivered",
            2,
            "127.0.0.1",
        )
    trail = sql(
        managed.deployment.settings,
        "SELECT actor, app FROM audit_events WHERE action = 'webhook.redelivered'",
    )
    assert [tuple(r) for r in trail] == [("m-portals-admin", "demo")]
