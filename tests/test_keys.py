"""Rotation drill on the real OpenBao: rotate the Transit key, rewrap in two resumable runs,
retire the old version — every portal still serves and refreshes."""

from __future__ import annotations

import json
import secrets

import hvac

from broker.app import create_app
from broker.config import load_settings
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls, bootstrap_vault
from tests.helpers import Deployment, register, run_broker, serve_app, sql

HUBS = [1_200_001, 1_200_002, 1_200_003]


def test_rotate_rewrap_retire(
    env: dict[str, str], backends: BackendUrls, sim: Simulator, sim_url: str
) -> None:
    key_name = f"drill-{secrets.token_hex(4)}"  # a key of its own: the drill retires versions
    bootstrap_vault(backends.vault_addr, backends.vault_token, key_name=key_name)
    env = {**env, "BROKER_VAULT_TRANSIT_KEY": key_name}
    settings = load_settings(env)
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        for hub in HUBS:
            sim.add_portal(hub)
            assert d.install(hub, access_token_ttl=60).status_code == 200

    root = hvac.Client(url=backends.vault_addr, token=backends.vault_token)
    root.secrets.transit.rotate_key(name=key_name)

    partial = run_broker(env, "--json", "keys", "rewrap", "--limit", "2", "--batch", "1")
    assert partial.returncode == 0, partial.stderr
    first = json.loads(partial.stdout)
    assert (first["latest_version"], first["rewrapped"]) == (2, 2)
    assert first["remaining"] == len(HUBS) * 2 - 2  # resumable: the rest is still old
    refused = run_broker(env, "--json", "keys", "status")
    assert json.loads(refused.stdout)["min_decryption_version"] == 1

    rest = run_broker(env, "--json", "keys", "rewrap", "--retire")
    assert rest.returncode == 0, rest.stderr
    done = json.loads(rest.stdout)
    assert (done["remaining"], done["failed"], done["min_decryption_version"]) == (0, 0, 2)
    stored = sql(settings, "SELECT refresh_ct, access_ct FROM portals")
    assert all(r["refresh_ct"].startswith("vault:v2:") for r in stored)
    assert all(r["access_ct"].startswith("vault:v2:") for r in stored)
    assert root.secrets.transit.read_key(name=key_name)["data"]["min_decryption_version"] == 2

    # A fresh replica (cold cache) serves every portal and refreshes them.
    with serve_app(create_app(settings)) as url:
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        for hub in HUBS:
            assert d.token(hub, min_ttl=0).status_code == 200
            assert d.token(hub, min_ttl=100).status_code == 200  # forces a refresh
    assert sum(sim.refreshes_by_hub().get(h, 0) for h in HUBS) == len(HUBS)
