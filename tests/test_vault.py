"""Vault on the real OpenBao: a short-lived broker token is renewed before it expires, an
unreachable Vault does not stop cached tokens, and an app's client secret rotates with no
failed refresh."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import hvac
from prometheus_client import REGISTRY

from broker.adapters.vault import VaultAdapter
from broker.app import create_app, open_admin
from broker.config import Secret, Settings, load_settings
from broker.core.models import PortalKey
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls
from broker.errors import Undecryptable
from tests.dedicated_openbao import dedicated_openbao
from tests.faultproxy import FaultProxy
from tests.helpers import Deployment, register, serve_app

HUB = 1_100_001


def _renewals() -> float:
    return (
        REGISTRY.get_sample_value("broker_vault_token_renewals_total", {"result": "renewed"}) or 0
    )


def test_short_lived_token_is_renewed(
    env: dict[str, str], backends: BackendUrls, sim: Simulator
) -> None:
    root = hvac.Client(url=backends.vault_addr, token=backends.vault_token)
    child = root.auth.token.create(policies=["root"], ttl="3s", explicit_max_ttl="120s")
    token = child["auth"]["client_token"]
    settings = load_settings({**env, "BROKER_VAULT_TOKEN": token})
    before = _renewals()
    with serve_app(create_app(settings)) as url:
        register(settings, sim, f"{url}/oauth/callback", slug="demo")
        time.sleep(7)  # more than two lifetimes of the token
        assert _renewals() - before >= 2
        assert root.auth.token.lookup(token)["data"]["ttl"] > 0
        ready = httpx.get(f"{url}/readyz?verbose").json()
        assert ready["backends"]["vault"] == "ok"


def test_vault_unreachable_keeps_serving_cached_tokens(
    env: dict[str, str], backends: BackendUrls, sim: Simulator, sim_url: str
) -> None:
    vault = httpx.URL(backends.vault_addr)
    proxy = FaultProxy(vault.host, vault.port or 8200)
    try:
        settings = load_settings(
            {
                **env,
                "BROKER_VAULT_ADDR": f"http://127.0.0.1:{proxy.port}",
                "BROKER_VAULT_TIMEOUT": "1",
            }
        )
        with serve_app(create_app(settings)) as url:
            client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
            d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
            sim.add_portal(HUB)
            assert d.install(HUB).status_code == 200
            first = d.token(HUB)
            assert first.status_code == 200
            proxy.set("down")
            for _ in range(20):
                again = d.token(HUB)
                assert again.status_code == 200, again.text
                assert again.json()["access_token"] == first.json()["access_token"]
            # Still ready: it serves cached tokens. Vault's state is for people.
            ready = httpx.get(f"{url}/readyz?verbose")
            assert ready.status_code == 200, ready.text
            assert ready.json()["backends"]["vault"] == "vault_unavailable"
    finally:
        proxy.close()


def test_client_secret_rotation_has_no_failed_refresh(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    settings = load_settings(env)
    with serve_app(create_app(settings)) as url:
        client_id, old, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, old, key)
        sim.add_portal(HUB)
        assert d.install(HUB, access_token_ttl=60).status_code == 200
        redirect = f"{url}/oauth/callback"
        failed_before = _misconfigured()
        new = "rotated-secret-value-0123456789"

        async def add_new_secret() -> list[str]:
            async with open_admin(settings) as svc:
                await svc.admin.add_app((await svc.admin.list_apps())[0], Secret(new), actor="test")
            from broker.adapters.vault import VaultAdapter

            vault = VaultAdapter(settings)
            await vault.login()
            try:
                return [s.get() for s in await vault.client_secrets("demo")]
            finally:
                await vault.close()

        # 1. The broker learns the new secret before HubSpot does: the old one still works.
        assert asyncio.run(add_new_secret()) == [new, old]
        assert d.token(HUB, min_ttl=100).status_code == 200  # forces a refresh
        # 2. HubSpot accepts both, then only the new one.
        sim.add_app(client_id, [new, old], [redirect])
        assert d.token(HUB, min_ttl=100).status_code == 200
        sim.add_app(client_id, [new], [redirect])
        assert d.token(HUB, min_ttl=100).status_code == 200
        assert sim.counters()["token.refresh_token"] >= 3
        assert _misconfigured() == failed_before


def _misconfigured() -> float:
    labels = {"outcome": "failed", "failure_class": "app_misconfigured"}
    return REGISTRY.get_sample_value("broker_refreshes_total", labels) or 0


async def test_concurrent_decrypts_share_transit_calls_and_keep_errors_their_own(
    settings: Settings,
) -> None:
    """40 concurrent decrypts, one of them of a ciphertext bound to another portal: the good
    ones come back in a few Transit calls (not 40), the bad one alone fails."""
    vault = VaultAdapter(settings)
    await vault.login()
    try:
        keys = [PortalKey("demo", 9_000 + i) for i in range(40)]
        cts = await vault.encrypt([(f"token-{i}", k.context("access")) for i, k in enumerate(keys)])
        requests = _vault_requests("decrypt")
        wrong = [(cts[0], keys[1].context("access"))]  # portal 0's ciphertext, portal 1's key
        results = await asyncio.gather(
            *(vault.decrypt([(ct, k.context("access"))]) for ct, k in zip(cts, keys, strict=True)),
            vault.decrypt(wrong),
            return_exceptions=True,
        )
        calls = _vault_requests("decrypt") - requests
    finally:
        await vault.close()
    assert results[:40] == [[f"token-{i}"] for i in range(40)]
    assert isinstance(results[40], Undecryptable)
    # One batch of 41: Vault's answer says which item it refused, so no call is repeated.
    assert calls == 1, calls


async def test_kept_connections_broken_by_the_network_are_not_used_again(
    env: dict[str, str], backends: BackendUrls
) -> None:
    """Transit keeps its connections open between calls; when the network breaks them while
    they sit idle (a proxy, a node restart), the next calls go over new ones, and succeed."""
    vault = httpx.URL(backends.vault_addr)
    proxy = FaultProxy(vault.host, vault.port or 8200)
    adapter = VaultAdapter(
        load_settings({**env, "BROKER_VAULT_ADDR": f"http://127.0.0.1:{proxy.port}"})
    )
    try:
        await adapter.login()
        key = PortalKey("demo", 9_100)
        (ct,) = await adapter.encrypt([("token", key.context("access"))])
        for _ in range(3):
            assert await adapter.decrypt([(ct, key.context("access"))]) == ["token"]
            proxy.set("reset")  # breaks the open connections
            proxy.set("pass")
    finally:
        await adapter.close()
        proxy.close()


def _vault_requests(operation: str) -> float:
    value = REGISTRY.get_sample_value("broker_vault_requests_total", {"operation": operation})
    return value or 0.0


def test_an_address_list_fails_over_to_a_node_that_answers(
    env: dict[str, str], backends: BackendUrls, sim: Simulator, sim_url: str
) -> None:
    """BROKER_VAULT_ADDR lists HA nodes, the first down (refused): every call lands on the
    node that answers (a refresh: decrypt and encrypt; the health check)."""
    vault = httpx.URL(backends.vault_addr)
    dead = FaultProxy(vault.host, vault.port or 8200)
    dead.set("down")
    try:
        addrs = f"http://127.0.0.1:{dead.port},{backends.vault_addr}"
        settings = load_settings({**env, "BROKER_VAULT_ADDR": addrs, "BROKER_VAULT_TIMEOUT": "1"})
        with serve_app(create_app(settings)) as url:
            client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
            d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
            sim.add_portal(HUB)
            assert d.install(HUB).status_code == 200
            refreshed = d.token(HUB, min_ttl=1500)
            assert refreshed.status_code == 200, refreshed.text
            ready = httpx.get(f"{url}/readyz?verbose").json()
            assert ready["backends"]["vault"] == "ok"
    finally:
        dead.close()


def test_a_sealed_node_is_left_for_the_next_one(env: dict[str, str], tmp_path: Path) -> None:
    """A sealed node answers its seal status with 200 {"sealed": true}: the health check
    must move on to the next node rather than report the cluster sealed. (Two dev servers
    sharing a root token stand in for two nodes of one cluster.)"""
    token = secrets.token_urlsafe(24)
    with (
        dedicated_openbao(tmp_path / "a", token=token) as first,
        dedicated_openbao(tmp_path / "b", token=token) as second,
    ):
        vault = {
            "BROKER_VAULT_ADDR": f"{first.addr},{second.addr}",
            "BROKER_VAULT_TOKEN": token,
            "BROKER_VAULT_TIMEOUT": "2",
        }
        settings = load_settings({**env, **vault})
        with serve_app(create_app(settings)) as url:
            before = httpx.get(f"{url}/readyz?verbose").json()
            first.root().sys.seal()  # type: ignore[no-untyped-call]  # untyped in types-hvac
            after = httpx.get(f"{url}/readyz?verbose").json()
    assert before["backends"]["vault"] == "ok"
    assert after["backends"]["vault"] == "ok"  # the next node answered
