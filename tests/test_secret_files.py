"""Secrets from files (Kubernetes mounts): every secret setting can come from
``BROKER_<NAME>_FILE`` instead of the environment, and is read again when the file changes
(Kubernetes swaps a symlink; editors and ``kubectl cp`` rewrite in place)."""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
from pathlib import Path

import hvac
import pytest

from broker.app import create_app
from broker.config import Secret, Settings, load_settings
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls
from broker.errors import ConfigError
from tests.helpers import Deployment, register, serve_app

SECRET_KEYS = [
    f"BROKER_{f.name.upper()}" for f in dataclasses.fields(Settings) if f.type == "Secret"
]
HUB = 9_200_001


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _swap(path: Path, value: str) -> None:
    """Replace the file as Kubernetes does: a new file, then an atomic rename over it."""
    fresh = path.with_suffix(".new")
    fresh.write_text(value)
    os.replace(fresh, path)


def test_every_secret_setting_can_come_from_a_file(env: dict[str, str], tmp_path: Path) -> None:
    assert (
        SECRET_KEYS
    )  # database, redis, vault token and secret id, webhook urls and secret, OIDC client
    values = {key: env.get(key, "") for key in SECRET_KEYS}
    values["BROKER_VAULT_SECRET_ID"] = "approle-secret-id"
    values["BROKER_WEBHOOK_URLS"] = "https://a.example/hook"
    values["BROKER_WEBHOOK_SECRET"] = _whsec()
    values["BROKER_OIDC_CLIENT_SECRET"] = "oidc-client-secret"
    from_files = {k: v for k, v in env.items() if k not in SECRET_KEYS}
    from_files |= {  # what the OIDC client secret goes with
        "BROKER_OIDC_ISSUER": "https://login.example.com",
        "BROKER_OIDC_CLIENT_ID": "hubspot-token-broker",
        "BROKER_OIDC_ROLES": "admins=portals:admin",
    }
    for key, value in values.items():
        path = tmp_path / key.lower()
        path.write_text(value + "\n")  # a trailing newline, as `echo` writes it
        from_files[f"{key}_FILE"] = str(path)
    settings = load_settings(from_files)  # no secret in any plain variable
    for key, value in values.items():
        secret = getattr(settings, key.removeprefix("BROKER_").lower())
        assert isinstance(secret, Secret)
        assert secret.get() == value
        assert value not in repr(settings)


def test_file_problems_are_reported_without_the_secret(env: dict[str, str], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("the-token")
    both = {**env, "BROKER_VAULT_TOKEN_FILE": str(token)}
    with pytest.raises(ConfigError, match="BROKER_VAULT_TOKEN and BROKER_VAULT_TOKEN_FILE"):
        load_settings(both)
    missing = {k: v for k, v in env.items() if k != "BROKER_DATABASE_URL"}
    missing["BROKER_DATABASE_URL_FILE"] = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="BROKER_DATABASE_URL_FILE") as refused:
        load_settings(missing)
    assert env["BROKER_DATABASE_URL"] not in str(refused.value)


def test_a_secret_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("first")
    secret = Secret.from_file(path)
    assert secret.get() == "first"
    _swap(path, "second")
    assert secret.get() == "second"
    path.write_text("third, in place")  # same inode, new size and mtime
    assert secret.get() == "third, in place"
    path.unlink()  # mid-rotation: the last value until the file is back
    assert secret.get() == "third, in place"
    assert "third" not in repr(secret)


def test_webhook_secrets_rotate_in_their_file(env: dict[str, str], tmp_path: Path) -> None:
    old, new = _whsec(), _whsec()
    path = tmp_path / "webhook_secret"
    path.write_text(old)
    settings = load_settings(
        {
            **env,
            "BROKER_WEBHOOK_URLS": "https://a.example/hook",
            "BROKER_WEBHOOK_SECRET_FILE": str(path),
        }
    )
    assert [s.get() for s in settings.webhook_secrets_by_url["https://a.example/hook"]] == [old]
    _swap(path, f"{new} {old}")  # the dispatcher asks on every delivery
    assert [s.get() for s in settings.webhook_secrets_by_url["https://a.example/hook"]] == [
        new,
        old,
    ]


def test_a_rotated_vault_token_file_is_used_without_a_restart(
    env: dict[str, str], backends: BackendUrls, sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    """The broker reads its Vault token from a file; the token is replaced in the file and
    the old one revoked: the running broker keeps decrypting (a cold cache) with the new one."""
    root = hvac.Client(url=backends.vault_addr, token=backends.vault_token)
    first = root.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    path = tmp_path / "vault-token"
    path.write_text(first)
    file_env = {k: v for k, v in env.items() if k != "BROKER_VAULT_TOKEN"}
    settings = load_settings({**file_env, "BROKER_VAULT_TOKEN_FILE": str(path)})
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        sim.add_portal(HUB)
        assert d.install(HUB, access_token_ttl=60).status_code == 200

        second = root.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
        _swap(path, second)
        root.auth.token.revoke(first)
        # A refresh needs Vault (decrypt the refresh token, encrypt the new ones).
        refreshed = d.token(HUB, min_ttl=100)
        assert refreshed.status_code == 200, refreshed.text
    root.auth.token.revoke(second)
