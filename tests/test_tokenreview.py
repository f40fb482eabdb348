"""Kubernetes TokenReview mode for workload identity (``tokenreview_url`` issuers).

End to end against a real Kubernetes API server (k3s through testcontainers) when a Docker
engine answers: a service account's projected token gets an access token; a token for
another audience is refused; deleting the service account ends its tokens before they
expire (what TokenReview adds over JWKS); and the broker logs in to OpenBao's real
``kubernetes`` auth backend, which reviews the broker's own token with that API server.
Without Docker these are skipped and say so: no Kubernetes API server can run on this
machine otherwise.

Always, on the real broker: the checks made before any review (algorithm allow-list, issuer,
expiry), an unreachable API server (nothing listening: 503, not a 401 that would tell the
caller its token is bad), the per-replica review budget (429 auth_throttled), and the
configuration rules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import hvac.exceptions
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.app import create_app, open_admin
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator
from broker.errors import ConfigError
from tests.backends import _docker_answers
from tests.dedicated_openbao import dedicated_openbao
from tests.helpers import Deployment, install_link, register, serve_app

POLICIES = Path(__file__).resolve().parent.parent / "deploy" / "vault"
AUDIENCE = "hubspot-token-broker"
ISSUER = "https://kubernetes.default.svc.cluster.local"
SUBJECT = "system:serviceaccount:payments:api"
HUB = 6_300_001
K3S_IMAGE = "rancher/k3s:v1.31.4-k3s1"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _mint(**overrides: Any) -> str:
    """A Kubernetes-shaped token signed by a key no one trusts: in TokenReview mode the broker
    never checks signatures itself, so these only reach the checks made before a review."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": [AUDIENCE], "iat": now, "exp": now + 600}
    claims.update(overrides)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256")


def _serve(
    env: dict[str, str], sim: Simulator, sim_url: str, issuer: dict[str, Any], subject: str
) -> Iterator[Deployment]:
    settings = load_settings(
        {**env, "BROKER_JWT_ISSUERS": json.dumps([issuer]), "BROKER_CALLER_CACHE_SECONDS": "1"}
    )
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        sim.add_portal(HUB)
        assert d.install(HUB).status_code == 200
        asyncio.run(_workload_caller(settings, issuer["issuer"], subject))
        yield d


async def _workload_caller(settings: Settings, issuer: str, subject: str) -> None:
    async with open_admin(settings) as svc:
        await svc.callers.create(
            "payments-api", apps=["demo"], identity=(issuer, subject), with_key=False, actor="t"
        )


def _ask(d: Deployment, credential: str) -> httpx.Response:
    return httpx.get(
        f"{d.url}/v1/portals/{HUB}/token",
        params={"app": "demo"},
        headers={"Authorization": f"Bearer {credential}"},
        timeout=30,
    )


# --- always: before the review, and an API server that does not answer ------------------------
@pytest.fixture
def unreachable(env: dict[str, str], sim: Simulator, sim_url: str) -> Iterator[Deployment]:
    issuer = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "tokenreview_url": f"https://127.0.0.1:{_closed_port()}",
        "review_rate": 1,
    }
    yield from _serve(env, sim, sim_url, issuer, SUBJECT)


def test_checks_before_the_review_and_an_unreachable_api_server(unreachable: Deployment) -> None:
    now = int(time.time())
    refused = {
        "expired": _mint(exp=now - 120),
        "unknown issuer": _mint(iss="https://evil.example"),
        "alg none": jwt.encode({"iss": ISSUER, "sub": SUBJECT, "exp": now + 600}, None, "none"),
    }
    for case, token in refused.items():
        response = _ask(unreachable, token)
        assert response.status_code == 401, (case, response.text)
        assert response.json()["code"] == "unauthenticated", case
    # A well-formed token needs the API server, which does not answer: 503, not 401.
    response = _ask(unreachable, _mint())
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "identity_provider_unavailable"
    assert "Retry-After" in response.headers
    # The budget (1 review/s, 2 of burst) was spent above: distinct tokens are now throttled.
    answers = [_ask(unreachable, _mint()) for _ in range(3)]
    throttled = [a for a in answers if a.status_code == 429]
    assert throttled, [a.status_code for a in answers]
    assert {a.json()["code"] for a in throttled} == {"auth_throttled"}
    assert all(int(a.headers["Retry-After"]) >= 1 for a in throttled)
    assert unreachable.token(HUB).status_code == 200  # broker keys never depend on it


def test_an_issuer_takes_exactly_one_way_to_verify(env: dict[str, str]) -> None:
    base = {"issuer": ISSUER, "audience": AUDIENCE}
    for bad in (
        base,
        {**base, "jwks_url": "https://a/jwks", "tokenreview_url": "https://b"},
        {**base, "tokenreview_url": "file:///etc/passwd"},
    ):
        with pytest.raises(ConfigError) as problem:
            load_settings({**env, "BROKER_JWT_ISSUERS": json.dumps([bad])})
        assert "BROKER_JWT_ISSUERS" in str(problem.value)
    ok = {**base, "tokenreview_url": "https://kubernetes.default.svc"}
    assert load_settings({**env, "BROKER_JWT_ISSUERS": json.dumps([ok])}).jwt_issuer_list == [ok]


# --- with a Docker engine: a real API server -------------------------------------------------
class Cluster:
    """Admin access to k3s's API server with the client certificate from its kubeconfig."""

    def __init__(self, kubeconfig: dict[str, Any], workdir: Path) -> None:
        cluster = kubeconfig["clusters"][0]["cluster"]
        user = kubeconfig["users"][0]["user"]
        self.url = str(cluster["server"])
        self.ca_file = workdir / "ca.crt"
        self.ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        cert, key = workdir / "admin.crt", workdir / "admin.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        self.http = httpx.Client(
            base_url=self.url, verify=str(self.ca_file), cert=(str(cert), str(key)), timeout=30
        )

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        assert response.status_code in (200, 201), response.text
        created: dict[str, Any] = response.json()
        return created

    def token(self, namespace: str, account: str, audiences: list[str] | None = None) -> str:
        spec: dict[str, Any] = {"expirationSeconds": 3600}
        if audiences:
            spec["audiences"] = audiences
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
        answer = self.create(path, {"apiVersion": "authentication.k8s.io/v1", "spec": spec})
        token: str = answer["status"]["token"]
        return token


@pytest.fixture(scope="module")
def k3s() -> Iterator[Cluster]:
    if not _docker_answers():
        pytest.skip("no Docker engine: a real Kubernetes API server (k3s) cannot run here")
    import yaml
    from testcontainers.community.k3s import K3SContainer

    with K3SContainer(K3S_IMAGE) as container, tempfile.TemporaryDirectory() as tmp:
        yield Cluster(yaml.safe_load(container.config_yaml()), Path(tmp))


def test_tokenreview_against_a_real_api_server(
    k3s: Cluster, env: dict[str, str], sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    k3s.create("/api/v1/namespaces", {"metadata": {"name": "payments"}})
    k3s.create("/api/v1/namespaces", {"metadata": {"name": "broker"}})
    for namespace, name in (("payments", "api"), ("broker", "reviewer")):
        k3s.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
    k3s.create(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": "htb-reviewer"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reviewer", "namespace": "broker"}],
        },
    )
    own = tmp_path / "token"
    own.write_text(k3s.token("broker", "reviewer"))
    caller = k3s.token("payments", "api", [AUDIENCE])
    issuer = str(jwt.decode(caller, options={"verify_signature": False})["iss"])
    review = {
        "issuer": issuer,
        "audience": AUDIENCE,
        "tokenreview_url": k3s.url,
        "ca_file": str(k3s.ca_file),
        "token_file": str(own),
    }
    for d in _serve(env, sim, sim_url, review, SUBJECT):
        response = _ask(d, caller)
        assert response.status_code == 200, response.text
        other = k3s.token("payments", "api", ["someone-else"])
        assert _ask(d, other).status_code == 401
        # Deleting the service account ends its tokens at once; the broker sees it once its
        # cache of verified tokens (1 s here) runs out.
        gone = k3s.http.delete("/api/v1/namespaces/payments/serviceaccounts/api")
        assert gone.status_code == 200, gone.text
        time.sleep(2)
        refused = _ask(d, caller)
        assert refused.status_code == 401, refused.text


def test_vault_kubernetes_auth_against_a_real_api_server(
    k3s: Cluster, env: dict[str, str], sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    """The broker logs in to OpenBao's real ``kubernetes`` backend, which reviews the broker's
    token with the API server (the path tests/test_vault_kubernetes_auth.py can only stand
    in for without a cluster)."""
    k3s.create("/api/v1/namespaces", {"metadata": {"name": "tokens"}})
    for name in ("hubspot-token-broker", "vault-reviewer"):
        k3s.create("/api/v1/namespaces/tokens/serviceaccounts", {"metadata": {"name": name}})
    k3s.create(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": "htb-vault-reviewer"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "vault-reviewer", "namespace": "tokens"}
            ],
        },
    )
    with dedicated_openbao(tmp_path / "openbao") as openbao:
        root = openbao.root()
        root.sys.create_or_update_policy("htb", (POLICIES / "broker.hcl").read_text())
        root.sys.enable_auth_method("kubernetes")
        root.write_data(
            "auth/kubernetes/config",
            data={
                "kubernetes_host": k3s.url,
                "kubernetes_ca_cert": k3s.ca_file.read_text(),
                "token_reviewer_jwt": k3s.token("tokens", "vault-reviewer"),
            },
        )
        root.write_data(
            "auth/kubernetes/role/htb",
            data={
                "bound_service_account_names": ["hubspot-token-broker"],
                "bound_service_account_namespaces": ["tokens"],
                "token_policies": ["htb"],
                "token_ttl": "5m",
            },
        )
        own = tmp_path / "token"
        own.write_text(k3s.token("tokens", "hubspot-token-broker"))
        dropped = ("BROKER_VAULT_KV_PREFIX", "BROKER_VAULT_TOKEN")
        shared = {k: v for k, v in env.items() if k not in dropped}
        shared["BROKER_VAULT_ADDR"] = openbao.addr
        admin = load_settings({**shared, "BROKER_VAULT_TOKEN": openbao.token})
        runtime = load_settings(
            {
                **shared,
                "BROKER_VAULT_AUTH": "kubernetes",
                "BROKER_VAULT_K8S_ROLE": "htb",
                "BROKER_VAULT_K8S_JWT_PATH": str(own),
            }
        )
        with serve_app(create_app(runtime)) as url:
            client_id, secret, key = register(admin, sim, f"{url}/oauth/callback", slug="k8s")
            d = Deployment(
                runtime,
                sim,
                sim_url,
                url,
                "k8s",
                client_id,
                secret,
                key,
                link_url=install_link(admin, "k8s"),  # minted by the operator, not the pod
            )
            sim.add_portal(HUB + 1)
            assert d.install(HUB + 1).status_code == 200  # Transit encrypt under the policy
            assert d.token(HUB + 1).status_code == 200
        # Another service account's token is refused by the role's bindings.
        other = k3s.token("tokens", "vault-reviewer")
        with pytest.raises(hvac.exceptions.VaultError):
            hvac.Client(url=openbao.addr).auth.kubernetes.login(role="htb", jwt=other)
