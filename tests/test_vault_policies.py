"""The broker running under exactly the least-privilege Vault policies shipped in
deploy/vault, logged in with AppRole against the real OpenBao: installs, serves and
refreshes; it cannot write client secrets (only the admin policy can); a refused login
is a ``vault_login_failed`` error, not a traceback; and no operator can make a Transit key
exportable or backed up, or retire key versions (only the key custodian, only that)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import hvac
import hvac.exceptions
import pytest

from broker.adapters.vault import VaultAdapter
from broker.app import create_app
from broker.config import Secret, load_settings
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls
from broker.errors import VaultError
from tests.helpers import Deployment, admin_key, install_link, register, serve_app

POLICIES = Path(__file__).resolve().parent.parent / "deploy" / "vault"
HUB = 8_100_001


def test_broker_under_shipped_policies_with_approle(
    env: dict[str, str], backends: BackendUrls, sim: Simulator, sim_url: str
) -> None:
    root = hvac.Client(url=backends.vault_addr, token=backends.vault_token)
    root.sys.create_or_update_policy("hubspot-token-broker", (POLICIES / "broker.hcl").read_text())
    root.sys.create_or_update_policy(
        "hubspot-token-broker-admin", (POLICIES / "broker-admin.hcl").read_text()
    )
    if "approle/" not in root.sys.list_auth_methods():
        root.sys.enable_auth_method("approle")
    role = f"htb-test-{secrets.token_hex(3)}"
    root.auth.approle.create_or_update_approle(
        role, token_policies=["hubspot-token-broker"], token_ttl="5m"
    )
    role_id = root.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    admin_token = root.auth.token.create(policies=["hubspot-token-broker-admin"], ttl="10m")

    # The policies are written for the default KV prefix: use it (with an app of our own).
    shared = {k: v for k, v in env.items() if k != "BROKER_VAULT_KV_PREFIX"}
    admin = load_settings({**shared, "BROKER_VAULT_TOKEN": admin_token["auth"]["client_token"]})
    runtime_env = {
        **{k: v for k, v in shared.items() if k != "BROKER_VAULT_TOKEN"},
        "BROKER_VAULT_AUTH": "approle",
        "BROKER_VAULT_ROLE_ID": role_id,
        "BROKER_VAULT_SECRET_ID": secret_id,
    }
    runtime = load_settings(runtime_env)
    slug = f"pol-{secrets.token_hex(3)}"
    with serve_app(create_app(runtime)) as url:
        client_id, client_secret, key = register(admin, sim, f"{url}/oauth/callback", slug=slug)
        d = Deployment(
            runtime,
            sim,
            sim_url,
            url,
            slug,
            client_id,
            client_secret,
            key,
            link_url=install_link(admin, slug),  # minted by the operator, not the pod
        )
        sim.add_portal(HUB)
        assert d.install(HUB, access_token_ttl=60).status_code == 200
        assert d.token(HUB, min_ttl=0).status_code == 200
        assert d.token(HUB, min_ttl=100).status_code == 200  # a refresh: decrypt + encrypt
        assert sim.counters()["token.refresh_token"] == 1

    async def runtime_cannot_write_secrets() -> None:
        vault = VaultAdapter(runtime)
        await vault.login()
        try:
            with pytest.raises(VaultError) as denied:
                await vault.add_client_secret(slug, Secret("not-allowed"))
            assert denied.value.code == "vault_forbidden"
        finally:
            await vault.close()

    asyncio.run(runtime_cannot_write_secrets())

    async def refused_login_is_a_broker_error() -> None:
        wrong = load_settings({**runtime_env, "BROKER_VAULT_SECRET_ID": "not-the-secret-id"})
        vault = VaultAdapter(wrong)
        try:
            with pytest.raises(VaultError) as refused:
                await vault.login()
            assert refused.value.code == "vault_login_failed"
            assert "not-the-secret-id" not in str(refused.value)
        finally:
            await vault.close()

    asyncio.run(refused_login_is_a_broker_error())


def test_operators_cannot_weaken_transit_keys(backends: BackendUrls) -> None:
    """The shipped policies on the real OpenBao: the operator policy can set no Transit key
    configuration at all (exportable, allow_plaintext_backup, min_decryption_version) on the
    token key or a signing key, nor export one; the key custodian may raise
    min_decryption_version and nothing else."""
    root = hvac.Client(url=backends.vault_addr, token=backends.vault_token)
    key = f"pol-{secrets.token_hex(4)}"  # a key of its own: the custodian retires a version
    root.secrets.transit.create_key(name=key, key_type="aes256-gcm96", derived=True)
    root.secrets.transit.rotate_key(name=key)
    tokens: dict[str, str] = {}
    for policy in ("broker-admin", "broker-key-custodian"):
        name = f"{policy}-{key}"
        text = (POLICIES / f"{policy}.hcl").read_text().replace("hubspot-tokens", key)
        root.sys.create_or_update_policy(name, text)
        tokens[policy] = root.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"]

    def config(policy: str, name: str, **params: Any) -> bool:
        """Whether ``policy`` may write these parameters to the key's configuration."""
        client = hvac.Client(url=backends.vault_addr, token=tokens[policy])
        try:
            client.write_data(f"transit/keys/{name}/config", data=params)
        except hvac.exceptions.Forbidden:
            return False
        return True

    weakening: list[dict[str, Any]] = [
        {"exportable": True},
        {"allow_plaintext_backup": True},
        {"deletion_allowed": True},
        {"min_decryption_version": 2, "exportable": True},
    ]
    for params in [*weakening, {"min_decryption_version": 2}]:
        assert not config("broker-admin", key, **params), params
        assert not config("broker-admin", "hubspot-token-broker-session", **params), params
    for params in weakening:
        assert not config("broker-key-custodian", key, **params), params
    assert config("broker-key-custodian", key, min_decryption_version=2)

    operator = hvac.Client(url=backends.vault_addr, token=tokens["broker-admin"])
    for path in (
        "transit/export/hmac-key/hubspot-token-broker-install-link",
        f"transit/export/encryption-key/{key}",
        f"transit/backup/{key}",
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            operator.read(path)
    state = root.secrets.transit.read_key(name=key)["data"]
    assert (state["exportable"], state["allow_plaintext_backup"]) == (False, False)
    assert state["min_decryption_version"] == 2
    signing = root.secrets.transit.read_key(name="hubspot-token-broker-session")["data"]
    assert (signing["exportable"], signing["allow_plaintext_backup"]) == (False, False)


def test_management_api_under_the_replicas_policies(
    env: dict[str, str], backends: BackendUrls, sim: Simulator
) -> None:
    """The management API on a broker logged in with the shipped replica policy: what needs
    Vault rights the replicas lack answers 403 ``vault_policy_denied`` (never a 500, and
    nothing written); with ``broker-management.hcl`` added it works, but the key custodian's
    retirement, which no replica policy grants, is still refused the same clear way."""
    root = hvac.Client(url=backends.vault_addr, token=backends.vault_token)
    for name in ("broker", "broker-management"):
        policy = "hubspot-token-broker" + name.removeprefix("broker")
        root.sys.create_or_update_policy(policy, (POLICIES / f"{name}.hcl").read_text())
    if "approle/" not in root.sys.list_auth_methods():
        root.sys.enable_auth_method("approle")
    shared = {
        k: v for k, v in env.items() if k not in ("BROKER_VAULT_KV_PREFIX", "BROKER_VAULT_TOKEN")
    }

    def runtime(*policies: str) -> Any:
        role = f"htb-mgmt-{secrets.token_hex(3)}"
        root.auth.approle.create_or_update_approle(
            role, token_policies=list(policies), token_ttl="5m"
        )
        return load_settings(
            {
                **shared,
                "BROKER_VAULT_AUTH": "approle",
                "BROKER_VAULT_ROLE_ID": root.auth.approle.read_role_id(role)["data"]["role_id"],
                "BROKER_VAULT_SECRET_ID": root.auth.approle.generate_secret_id(role)["data"][
                    "secret_id"
                ],
            }
        )

    slug = f"mgmt-{secrets.token_hex(3)}"
    app = {"client_id": "cid", "redirect_uri": "https://broker.example/oauth/callback"}
    denied = runtime("hubspot-token-broker")
    with serve_app(create_app(denied)) as url:
        key = admin_key(denied)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
            for method, path, body in (
                ("PUT", f"/v1/admin/apps/{slug}", {**app, "client_secret": "s3cret-value"}),
                ("PUT", f"/v1/admin/apps/{slug}-p/private/7", {"access_token": "s3cret-value"}),
                ("GET", "/v1/admin/keys/transit", None),
                ("POST", "/v1/admin/keys/transit/rewrap", {}),
                ("GET", "/v1/admin/keys/signing", None),
                ("POST", "/v1/admin/keys/signing/rotate", {"purposes": ["session"]}),
            ):
                refused = client.request(method, path, json=body)
                assert refused.status_code == 403, (path, refused.text)
                problem = refused.json()
                assert problem["code"] == "vault_policy_denied", path
                assert "broker-management.hcl" in problem["detail"]
                assert "s3cret-value" not in refused.text
            assert client.get("/v1/admin/apps").json()["apps"] == []  # nothing was saved
            assert client.post("/v1/admin/retention/sweep").status_code == 200  # no Vault

    managing = runtime("hubspot-token-broker", "hubspot-token-broker-management")
    with serve_app(create_app(managing)) as url:
        key = admin_key(managing, name="mgmt-admin")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
            saved = client.put(f"/v1/admin/apps/{slug}", json={**app, "client_secret": "s3cret"})
            assert saved.status_code == 201, saved.text
            assert "s3cret" not in saved.text
            assert client.get("/v1/admin/keys/transit").status_code == 200
            assert client.get("/v1/admin/keys/signing").status_code == 200
            custodian = client.post("/v1/admin/keys/transit/rewrap", json={"retire": True})
            assert custodian.status_code == 403, custodian.text
            assert custodian.json()["code"] == "vault_policy_denied"
            private = f"/v1/admin/apps/{slug}-p/private/7"
            assert client.put(private, json={"access_token": "pat-s3cret"}).status_code == 200

    # Revoking a private app's portal destroys its token under the replica policy alone.
    with serve_app(create_app(denied)) as url:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers) as client:
            removed = client.delete(private)
            assert removed.status_code == 200, removed.text
            assert removed.json()["upstream"] == "not_applicable"
    with pytest.raises(hvac.exceptions.InvalidPath):  # every version destroyed
        root.secrets.kv.v2.read_secret_metadata(
            f"hubspot-token-broker/apps/{slug}-p/private-app/7", mount_point="secret"
        )
