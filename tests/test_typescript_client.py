"""The TypeScript client (clients/typescript) against a real broker and the HubSpot simulator.

This file arranges the portals and starts the broker (with ``BROKER_MIN_TTL_MAX`` lowered,
so the client must learn the cap rather than assume 1500); the client's own tests
(``node --test``, clients/typescript/test) then run against it, over HTTP like any Node
service. What each portal is for is listed at the top of test/client.test.ts.
"""

from __future__ import annotations

import asyncio

import pytest

from broker.app import open_admin
from broker.config import Secret
from broker.dev.simulator import Simulator
from tests import typescript
from tests.helpers import Deploy, Deployment, sql

pytestmark = typescript.needs_node

CAP = 1200
HUB, HUB_SHORT, HUB_AUTH, HUB_REVOKED, HUB_DEAD, HUB_PRIVATE = range(6_500_001, 6_500_007)


@pytest.fixture
def deployment(deploy: Deploy, sim: Simulator) -> Deployment:
    typescript.build()  # first: the tokens installed below must not age while npm works
    d = deploy(
        env={"BROKER_MIN_TTL_MAX": str(CAP)},
        portals=(HUB, HUB_SHORT, HUB_AUTH, HUB_REVOKED, HUB_DEAD),
    )
    settings = d.settings
    for hub, ttl in ((HUB, 1800), (HUB_SHORT, 600), (HUB_REVOKED, 1800), (HUB_DEAD, 1800)):
        assert d.install(hub, access_token_ttl=ttl).status_code == 200
    sql(settings, f"UPDATE portals SET state = 'revoked' WHERE hub_id = {HUB_REVOKED}")
    sim.kill_grant(HUB_DEAD)
    sql(
        settings,
        "UPDATE portals SET access_expires_at = now() - interval '1 second' "
        f"WHERE hub_id = {HUB_DEAD}",
    )
    # Just under the cap: the 401 retry wants its remaining life + 60 s, above the cap.
    assert d.install(HUB_AUTH, access_token_ttl=CAP - 5).status_code == 200
    sim.configure(access_token_ttl=1800)  # what refreshes get from now on
    return d


def _private_app(deployment: Deployment) -> str:
    """The private app ``priv`` of HUB_PRIVATE; returns a caller key that reads it."""
    deployment.sim.add_portal(HUB_PRIVATE)
    pat = Secret(deployment.sim.create_private_app_token(HUB_PRIVATE))

    async def add() -> str:
        async with open_admin(deployment.settings) as svc:
            await svc.private_apps.add("priv", HUB_PRIVATE, pat, scopes=[], actor="test")
            return (await svc.callers.create("priv-reader", apps=["priv"], actor="test")).secret

    return asyncio.run(add())


def test_typescript_client_against_a_real_broker(deployment: Deployment) -> None:
    private_key = _private_app(deployment)
    output = typescript.node_test(
        {
            "BROKER_URL": deployment.url,
            "BROKER_KEY": deployment.caller_key,
            "SIM_URL": deployment.sim_url,
            "INSTALL_LINK": deployment.link_url,
            "MIN_TTL_MAX": str(CAP),
            "HUB": str(HUB),
            "HUB_SHORT": str(HUB_SHORT),
            "HUB_AUTH": str(HUB_AUTH),
            "HUB_REVOKED": str(HUB_REVOKED),
            "HUB_DEAD": str(HUB_DEAD),
            "HUB_PRIVATE": str(HUB_PRIVATE),
            "BROKER_KEY_PRIVATE": private_key,
        }
    )
    assert "min_ttl cap is learned" in output
    # The fetch helper reached HubSpot: 200, 401 and the retried 200; then the last 401.
    assert deployment.sim.counters()["contacts"] == 4
