"""Authorization matrix: every role by every endpoint by the caller's own portal and another
portal. Every denied cell is a 403 that changes nothing; every allowed cell works."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from broker.app import create_app, open_admin
from broker.config import Settings, load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from tests.helpers import Deployment, register, serve_app

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
def deployment(env: dict[str, str], sim: Simulator, sim_url: str) -> Iterator[Deployment]:
    settings = load_settings(env)
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        for hub in [*OWN.values(), OTHER]:
            sim.add_portal(hub)
            assert d.install(hub).status_code == 200
        yield d


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
