"""Token fingerprints are made when a token is obtained (install, refresh) and stored with its
row: a cache fill then makes no Transit hmac call, yet the audit trail shows the same keyed
fingerprint as before. Rows without one (older rows) are fingerprinted on the fill; the
database never keeps a fingerprint that belongs to another token."""

from __future__ import annotations

import asyncio
import time

from broker.app import open_admin
from broker.config import Settings
from broker.dev.simulator import Simulator
from tests.helpers import Deployment, deployed, metric_value, sql

HUB, OTHER = 8_200_001, 8_200_002


def _stored(settings: Settings, hub: int) -> str | None:
    [row] = sql(settings, f"SELECT access_fp FROM portals WHERE hub_id = {hub}")
    fingerprint: str | None = row["access_fp"]
    return fingerprint


def _expected(settings: Settings, token: str) -> tuple[str, set[str]]:
    """The fingerprint key's fingerprint of ``token``, and every fingerprint audited."""

    async def run() -> tuple[str, set[str]]:
        async with open_admin(settings) as svc:
            events = await svc.admin.audit(action="token.issued", limit=1000)
            return await svc.keyring.fingerprint(token), {e.detail["fingerprint"] for e in events}

    time.sleep(0.7)  # the audit trail is flushed every 0.5 s
    return asyncio.run(run())


def _hmacs(d: Deployment) -> float:
    return metric_value(d.url, "broker_vault_requests_total", operation="hmac")


def test_a_cache_fill_uses_the_stored_fingerprint(
    settings: Settings, sim: Simulator, sim_url: str
) -> None:
    sim.configure(access_token_ttl=900)
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        installed = _stored(settings, HUB)
        assert installed is not None
        assert len(installed) == 16
        hmacs = _hmacs(d)
        first = d.token(HUB, min_ttl=0)  # a cache miss: one row read, one decrypt
        assert first.status_code == 200, first.text
        assert _hmacs(d) == hmacs
        expected, audited = _expected(settings, first.json()["access_token"])
        assert installed == expected
        assert expected in audited

        # A refresh stores the new token's fingerprint with it.
        sim.configure(access_token_ttl=1800)
        refreshed = d.token(HUB, min_ttl=1500)
        assert refreshed.status_code == 200, refreshed.text
        token = refreshed.json()["access_token"]
        assert token != first.json()["access_token"]
        expected, audited = _expected(settings, token)
        assert _stored(settings, HUB) == expected != installed
        assert expected in audited


def test_a_row_without_a_fingerprint_gets_one_made_on_the_fill(
    settings: Settings, sim: Simulator, sim_url: str
) -> None:
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        sim.add_portal(OTHER)
        assert d.install(OTHER).status_code == 200
        sql(settings, f"UPDATE portals SET access_fp = NULL WHERE hub_id = {HUB}")  # older row
        hmacs = _hmacs(d)
        served = d.token(HUB, min_ttl=0)
        assert served.status_code == 200, served.text
        assert _hmacs(d) == hmacs + 1
        expected, audited = _expected(settings, served.json()["access_token"])
        assert expected in audited

        # A statement that changes the token without its fingerprint clears the old one.
        kept = _stored(settings, OTHER)
        sql(settings, f"UPDATE portals SET access_fp = 'x' WHERE hub_id = {HUB}")
        sql(
            settings,
            "UPDATE portals SET access_ct = (SELECT access_ct FROM portals WHERE hub_id = "
            f"{OTHER}) WHERE hub_id = {HUB}",
        )
        assert _stored(settings, HUB) is None
        assert _stored(settings, OTHER) == kept
