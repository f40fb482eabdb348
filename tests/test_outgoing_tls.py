"""Outgoing TLS to servers signed by a private CA: Vault (a real OpenBao serving HTTPS with
its own CA, ``BROKER_VAULT_CACERT``) and HubSpot (the simulator behind TLS, as through a
TLS-inspecting egress proxy, ``BROKER_CA_BUNDLE``). Without the setting the broker refuses
the certificate; with it, installs, refreshes and readiness work."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from broker.adapters.hubspot_http import HubSpotHttp
from broker.app import create_app, open_admin
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator
from broker.dev.simulator.server import make_config
from broker.errors import VaultError
from tests.dedicated_openbao import dedicated_openbao
from tests.helpers import Deployment, grant_gateway, install_link, register, serve_app
from tests.tls import CertificateAuthority

HUB = 1_700_001


@pytest.fixture
def tls_simulator(sim: Simulator, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The session's simulator state served over HTTPS by a CA of this test's own; yields
    the https URL and the CA bundle."""
    ca = CertificateAuthority.create(tmp_path / "pki", name="egress proxy CA")
    cert, key = tmp_path / "pki" / "sim.crt", tmp_path / "pki" / "sim.key"
    ca.issue(cert, key, serial=11)
    config = make_config(sim, "127.0.0.1", 0)
    config.ssl_certfile, config.ssl_keyfile = str(cert), str(key)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the TLS simulator did not start"
        assert time.monotonic() < deadline, "the TLS simulator did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", ca.pem
    finally:
        server.should_exit = True
        thread.join(10)


def _install(settings: Settings, sim: Simulator, hub: int, ca: Path) -> httpx.Response:
    """The browser side of an install; the browser trusts the simulator's CA."""
    sim.configure(consent="auto", consent_hub_id=hub, access_token_ttl=600)
    verify = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(timeout=30, follow_redirects=True, verify=verify) as browser:
        return browser.get(install_link(settings, "demo"))


def test_hubspot_behind_a_private_ca_needs_the_ca_bundle(
    env: dict[str, str], sim: Simulator, tls_simulator: tuple[str, Path]
) -> None:
    sim_https, ca = tls_simulator
    hosts = {"BROKER_HUBSPOT_API_URL": sim_https, "BROKER_HUBSPOT_APP_URL": sim_https}
    settings = load_settings({**env, **hosts, "BROKER_CA_BUNDLE": str(ca)})
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_https, url, "demo", client_id, secret, key)
        sim.add_portal(HUB)
        installed = _install(settings, sim, HUB, ca)
        assert installed.status_code == 200, installed.text  # code exchange over TLS
        refreshed = d.token(HUB, min_ttl=1500)  # > the 600 s left: a refresh over TLS
        assert refreshed.status_code == 200, refreshed.text
        assert sim.counters()["token.refresh_token"] == 1
        grant_gateway(settings, None, ["/crm/"])  # the gateway's lean client, over TLS too
        with d.client() as client:
            via = client.get(
                f"/v1/portals/{HUB}/hubspot/crm/v3/objects/contacts",
                params={"limit": "1"},
                headers={"Authorization": f"Bearer {d.caller_key}"},
            )
        assert via.status_code == 200, via.text
        assert len(via.json()["results"]) == 1

    # The same HubSpot without the bundle: its certificate is refused, nothing is stored.
    refused = load_settings({**env, **hosts})
    with serve_app(create_app(refused)) as url:
        register(refused, sim, f"{url}/oauth/callback", slug="demo")
        sim.add_portal(HUB + 1)
        failed = _install(refused, sim, HUB + 1, ca)
        assert failed.status_code == 503, failed.text
        assert "hubspot_unavailable" in failed.text


def test_vault_with_a_private_ca_needs_vault_cacert(env: dict[str, str], tmp_path: Path) -> None:
    with dedicated_openbao(tmp_path / "openbao", tls=True) as openbao:
        assert openbao.addr.startswith("https://")
        assert openbao.cacert is not None
        vault = {"BROKER_VAULT_ADDR": openbao.addr, "BROKER_VAULT_TOKEN": openbao.token}
        settings = load_settings({**env, **vault, "BROKER_VAULT_CACERT": openbao.cacert})
        with serve_app(create_app(settings)) as url:
            ready = httpx.get(f"{url}/readyz?verbose")
            assert ready.status_code == 200, ready.text
            assert ready.json()["backends"]["vault"] == "ok"

        # Without it the broker does not start: the certificate is not trusted.
        async def start() -> None:
            async with open_admin(load_settings({**env, **vault})):
                pass

        with pytest.raises(VaultError) as refused:
            asyncio.run(start())
        assert refused.value.code == "vault_unavailable"


def test_an_egress_proxy_in_the_environment_keeps_hubspot_on_httpx(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean client speaks to HubSpot directly; with a proxy that applies to HubSpot's
    host (HTTPS_PROXY, NO_PROXY not matching) calls go through httpx, which honours it."""
    settings = load_settings({**env, "BROKER_HUBSPOT_API_URL": "https://api.hubapi.com"})
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    assert not HubSpotHttp(settings).uses_httpx
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert HubSpotHttp(settings).uses_httpx
    monkeypatch.setenv("NO_PROXY", "localhost,.hubapi.com")
    assert not HubSpotHttp(settings).uses_httpx
