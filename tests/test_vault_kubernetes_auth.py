"""The broker's Vault Kubernetes auth (``BROKER_VAULT_AUTH=kubernetes``), client side, on a
real OpenBao, including a kubelet-style rotation of the projected service-account token.

Stand-in, said plainly: no Kubernetes API server can run here, so OpenBao's ``jwt`` auth
backend, mounted at ``auth/kubernetes`` (the path the broker's Kubernetes login posts to),
stands in for the ``kubernetes`` backend. Both take the same login request,
``POST auth/<mount>/login {"role", "jwt"}``, and answer with the same kind of renewable
token, so this exercises the broker's real code: reading the token file, logging in, renewing,
and re-reading the file on every re-login. The JWTs are Kubernetes-shaped (issuer, audience,
``system:serviceaccount:<ns>:<name>`` subject, ``kubernetes.io`` claims), signed by a key made
here whose public half OpenBao is configured with (``jwt_validation_pubkeys``).

What it does NOT prove: anything on the server side of Kubernetes auth. OpenBao checks the
signature, issuer, audience, subject and expiry itself; a real ``kubernetes`` backend instead
sends the JWT to the API server's TokenReview, which also rejects tokens of deleted pods or
service accounts. TokenReview, ``kubernetes_host``/CA configuration and the
``bound_service_account_*`` role fields are not exercised.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import hvac.exceptions
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from broker.app import create_app
from broker.config import load_settings
from broker.dev.simulator import Simulator
from tests.dedicated_openbao import DedicatedOpenBao, dedicated_openbao
from tests.helpers import Deployment, install_link, register, serve_app

POLICIES = Path(__file__).resolve().parent.parent / "deploy" / "vault"
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = ISSUER  # what a pod's auto-mounted token carries by default
NAMESPACE, SERVICE_ACCOUNT = "broker", "hubspot-token-broker"
SUBJECT = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
ROLE = "hubspot-token-broker"
LOGIN_PATH = "auth/kubernetes/login"
HUB = 8_200_001


class ServiceAccountIssuer:
    """Signs Kubernetes-shaped service-account JWTs, like the API server does for a pod."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._pod_uid = str(uuid.uuid4())

    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def mint(self) -> tuple[str, str]:
        """A fresh token and its ``jti``."""
        now, jti = int(time.time()), str(uuid.uuid4())
        claims = {
            "iss": ISSUER,
            "aud": [AUDIENCE],
            "sub": SUBJECT,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": jti,
            "kubernetes.io": {
                "namespace": NAMESPACE,
                "pod": {"name": "hubspot-token-broker-0", "uid": self._pod_uid},
                "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": "sa-uid"},
            },
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "k1"}), jti


class ProjectedVolume:
    """The kubelet's layout for a projected token: ``token -> ..data/token`` and
    ``..data -> ..<timestamp>/``; a rotation writes a new directory and swaps ``..data``
    atomically, so the old file is gone, not rewritten in place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700)
        self._generation = 0
        self.path = root / "token"

    def write(self, token: str) -> None:
        self._generation += 1
        payload = self.root / f"..{self._generation:04d}"
        payload.mkdir(mode=0o700)
        (payload / "token").write_text(token)
        (payload / "token").chmod(0o600)
        swap = self.root / "..data_tmp"
        swap.symlink_to(payload.name)
        previous = os.readlink(self.root / "..data") if (self.root / "..data").exists() else None
        os.replace(swap, self.root / "..data")
        if previous is None:
            self.path.symlink_to("..data/token")
        else:
            (self.root / previous / "token").unlink()
            (self.root / previous).rmdir()


@pytest.fixture
def openbao(tmp_path: Path) -> Iterator[DedicatedOpenBao]:
    # A dedicated server: auth/kubernetes/ and the default KV prefix (which the shipped
    # policy names) are then this test's alone.
    with dedicated_openbao(tmp_path / "openbao") as server:
        yield server


def _configure(root: hvac.Client, issuer: ServiceAccountIssuer, *, jti: str) -> None:
    root.sys.create_or_update_policy(ROLE, (POLICIES / "broker.hcl").read_text())
    root.sys.enable_auth_method("jwt", path="kubernetes")
    root.write_data(
        "auth/kubernetes/config",
        data={"jwt_validation_pubkeys": [issuer.public_pem()], "bound_issuer": ISSUER},
    )
    _bind_role(root, jti)


def _bind_role(root: hvac.Client, jti: str) -> None:
    """The role accepts only the token with this ``jti``: the stand-in for every older token
    having expired, without waiting one out. ``claim_mappings`` copies the ``jti`` into the
    Vault token's metadata, so the test can see which file content a login used."""
    root.write_data(
        f"auth/kubernetes/role/{ROLE}",
        data={
            "role_type": "jwt",
            "bound_audiences": [AUDIENCE],
            "user_claim": "sub",
            "bound_subject": SUBJECT,
            "bound_claims": {"jti": jti},
            "claim_mappings": {"jti": "jti"},
            "token_policies": [ROLE],
            "token_no_default_policy": True,  # only what deploy/vault/broker.hcl grants
            "token_ttl": "5s",  # renewed every ~3.3 s by the broker's loop
            "token_max_ttl": "10m",
        },
    )


def _broker_logins(root: hvac.Client) -> list[dict[str, Any]]:
    """Lookup data of every live token issued by the Kubernetes login path."""
    found = []
    for accessor in root.auth.token.list_accessors()["data"]["keys"]:
        data = root.auth.token.lookup_accessor(accessor)["data"]
        if data.get("path") == LOGIN_PATH:
            found.append(data)
    return found


def _committed_refreshes() -> float:
    labels = {"outcome": "success", "failure_class": "none"}  # counted after the commit
    return REGISTRY.get_sample_value("broker_refreshes_total", labels) or 0


def _relogins() -> float:
    return (
        REGISTRY.get_sample_value("broker_vault_token_renewals_total", {"result": "relogin"}) or 0
    )


def test_kubernetes_login_rereads_the_rotated_service_account_token(
    env: dict[str, str], openbao: DedicatedOpenBao, sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    root = openbao.root()
    issuer = ServiceAccountIssuer()
    first, first_jti = issuer.mint()
    _configure(root, issuer, jti=first_jti)
    volume = ProjectedVolume(tmp_path / "serviceaccount")
    volume.write(first)

    # The shipped policy names the default KV prefix; the admin (root) writes the app secret.
    shared = {
        k: v for k, v in env.items() if k not in ("BROKER_VAULT_KV_PREFIX", "BROKER_VAULT_TOKEN")
    }
    shared["BROKER_VAULT_ADDR"] = openbao.addr
    admin = load_settings({**shared, "BROKER_VAULT_TOKEN": openbao.token})
    runtime = load_settings(
        {
            **shared,
            "BROKER_VAULT_AUTH": "kubernetes",
            "BROKER_VAULT_K8S_ROLE": ROLE,
            "BROKER_VAULT_K8S_JWT_PATH": str(volume.path),
        }
    )
    slug = f"k8s-{secrets.token_hex(3)}"
    with serve_app(create_app(runtime)) as url:
        # 1. Logged in with the file's token, under the shipped least-privilege policy.
        logins = _broker_logins(root)
        assert [t["meta"]["jti"] for t in logins] == [first_jti]
        assert logins[0]["policies"] == [ROLE]
        assert logins[0]["meta"]["role"] == ROLE
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
        assert d.install(HUB, access_token_ttl=60).status_code == 200  # encrypt
        assert d.token(HUB, min_ttl=0).status_code == 200
        committed = _committed_refreshes()
        refreshed = d.token(HUB, min_ttl=100)  # a refresh: decrypt, HubSpot, encrypt, commit
        assert refreshed.status_code == 200, refreshed.text
        assert sim.counters()["token.refresh_token"] == 1
        assert _committed_refreshes() == committed + 1

        # 2. The kubelet rotates the token; the old one stops being accepted.
        second, second_jti = issuer.mint()
        volume.write(second)
        _bind_role(root, second_jti)
        with pytest.raises(hvac.exceptions.InvalidRequest):
            hvac.Client(url=openbao.addr).auth.kubernetes.login(role=ROLE, jwt=first)

        # 3. The broker's Vault token is revoked: its renewal fails and it logs in again,
        # which works only if it reads the file again.
        before = _relogins()
        current = _broker_logins(root)
        assert [t["meta"]["jti"] for t in current] == [first_jti]
        root.auth.token.revoke_accessor(current[0]["accessor"])
        deadline = time.monotonic() + 15
        while _relogins() == before:
            assert time.monotonic() < deadline, "the broker did not log in again"
            time.sleep(0.1)
        assert [t["meta"]["jti"] for t in _broker_logins(root)] == [second_jti]

        # 4. And it works under the new token: another refresh is encrypted and committed
        # (a failed one would still answer 200 with the old, still valid, access token).
        again = d.token(HUB, min_ttl=100)
        assert again.status_code == 200, again.text
        assert again.json()["access_token"] != refreshed.json()["access_token"]
        assert sim.counters()["token.refresh_token"] == 2
        assert _committed_refreshes() == committed + 2
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
