"""Probes and metrics. ``/livez`` needs nothing; ``/readyz`` says whether this replica can
serve tokens — it stays ready while Redis hangs or Vault is sealed (cached tokens keep being
served) and turns unready only with PostgreSQL down and nothing cached — while
``/readyz?verbose`` and ``broker_backend_up`` report every backend. ``/metrics`` carries real
samples and never a hub_id label or a token."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.app import create_app, open_admin
from broker.config import Secret, load_settings
from broker.dev.simulator import Simulator
from tests.chaos.cluster import Replica, start_replica
from tests.dedicated_openbao import dedicated_openbao
from tests.dedicated_valkey import dedicated_valkey
from tests.faultproxy import FaultProxy
from tests.helpers import Deployment, metric_samples, metric_value, register, serve_app

HUB = 1_300_001


def test_probes_and_metrics(env: dict[str, str], sim: Simulator, sim_url: str) -> None:
    settings = load_settings(env)
    with serve_app(create_app(settings)) as url:
        live = httpx.get(f"{url}/livez")
        assert live.status_code == 200
        assert live.json() == {"status": "alive"}
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "reason": "ready"}
        verbose = httpx.get(f"{url}/readyz?verbose").json()
        assert verbose["backends"] == {
            "postgres": "ok",
            "redis": "ok",
            "vault": "ok",
            "hubspot": "ok",
        }

        client_id, secret, key = register(settings, sim, f"{url}/oauth/callback", slug="demo")
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        sim.add_portal(HUB)
        assert d.install(HUB).status_code == 200
        token = d.token(HUB).json()["access_token"]
        assert d.token(HUB).status_code == 200

        for backend in ("postgres", "redis", "vault", "hubspot"):
            assert metric_value(url, "broker_backend_up", backend=backend) == 1
        assert metric_value(url, "broker_ready") == 1
        (build,) = metric_samples(url, "broker_build_info")
        assert build[1] == 1
        assert build[0]["version"]
        assert build[0]["python"]
        assert metric_value(url, "broker_token_requests_total", result="cache_hit") >= 1
        token_route = metric_value(
            url, "broker_http_request_duration_seconds_count", route="token", status_class="2xx"
        )
        assert token_route >= 2
        probes = metric_value(
            url, "broker_http_request_duration_seconds_count", route="probes", status_class="2xx"
        )
        assert probes >= 2
        text = httpx.get(f"{url}/metrics").text
        labels = {
            name
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            for name in sample.labels
        }
        assert {"backend", "route", "status_class", "result"} <= labels  # parsed, labelled
        assert not labels & {"hub_id", "user_id", "portal", "portal_id"}
        assert "hub_id" not in text  # never a label (unbounded, and it names a customer)
        assert str(HUB) not in text
        assert token not in text


def test_readyz_stays_ready_without_redis(env: dict[str, str]) -> None:
    settings = load_settings({**env, "BROKER_REDIS_URL": "redis://127.0.0.1:9/0"})
    with serve_app(create_app(settings)) as url:
        assert httpx.get(f"{url}/livez").status_code == 200
        ready = httpx.get(f"{url}/readyz?verbose")
        assert ready.status_code == 200, ready.text
        assert ready.json()["backends"]["redis"] == "redis_unavailable"
        assert metric_value(url, "broker_backend_up", backend="redis") == 0


def test_request_id_is_echoed_or_made(env: dict[str, str]) -> None:
    with serve_app(create_app(load_settings(env))) as url:
        assert (
            httpx.get(f"{url}/livez", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
            == "abc-123"
        )
        made = httpx.get(f"{url}/livez", headers={"X-Request-ID": "bad id\twith tab"})
        assert made.headers["x-request-id"] != "bad id\twith tab"
        assert re.fullmatch(r"[0-9a-f]{16,}", made.headers["x-request-id"])
        problem = httpx.get(f"{url}/v1/portals/1/token", headers={"X-Request-ID": "req-9"})
        assert problem.json()["request_id"] == "req-9"


# --- real processes: readiness through backend failures -------------------------------------


@pytest.fixture
def postgres_proxy(database_url: str) -> Iterator[tuple[FaultProxy, str]]:
    parts = urlsplit(database_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxied = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    try:
        yield proxy, proxied
    finally:
        proxy.close()


def test_a_cached_private_app_token_does_not_keep_a_replica_ready(
    env: dict[str, str], sim: Simulator, postgres_proxy: tuple[FaultProxy, str]
) -> None:
    """A private app's static token never expires: counting it, a replica with PostgreSQL
    down would stay Ready forever while its OAuth tokens (here: none) run out."""
    proxy, proxied_db = postgres_proxy
    settings = load_settings({**env, "BROKER_DATABASE_URL": proxied_db})
    sim.add_portal(HUB)
    pat = sim.create_private_app_token(HUB)

    async def seed() -> str:
        async with open_admin(settings) as svc:
            await svc.private_apps.add("priv", HUB, Secret(pat), scopes=[], actor="test")
            return (await svc.callers.create("reader", apps=["priv"], actor="test")).secret

    key = asyncio.run(seed())
    with serve_app(create_app(settings)) as url:
        answer = httpx.get(
            f"{url}/v1/portals/{HUB}/token",
            params={"app": "priv"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.json()["access_token"] == pat  # cached now
        proxy.set("down")
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert (ready.status_code, ready.json()["reason"]) == (503, "postgres_unavailable")
        proxy.set("pass")


def _ready(replica: Replica) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{replica.url}/readyz?verbose", timeout=10)
    return response.status_code, response.json()


def _serves(d: Deployment, replica: Replica, expected: str, *, times: int = 10) -> None:
    for _ in range(times):
        answer = httpx.get(
            f"{replica.url}/v1/portals/{HUB}/token",
            params={"app": d.app},
            headers={"Authorization": f"Bearer {d.caller_key}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["access_token"] == expected


def test_readiness_means_can_serve_through_backend_failures(
    env: dict[str, str],
    sim: Simulator,
    sim_url: str,
    postgres_proxy: tuple[FaultProxy, str],
    tmp_path: Path,
) -> None:
    """Redis hung, PostgreSQL down, Vault sealed — on real ``broker serve`` processes, each
    backend a real server of the test's own (or behind a fault proxy)."""
    proxy, proxied_db = postgres_proxy
    with (
        dedicated_valkey(tmp_path / "valkey") as valkey,
        dedicated_openbao(tmp_path / "openbao") as openbao,
    ):
        replica_env = {
            **env,
            "BROKER_DATABASE_URL": proxied_db,
            "BROKER_REDIS_URL": valkey.url,
            "BROKER_VAULT_ADDR": openbao.addr,
            "BROKER_VAULT_TOKEN": openbao.token,
        }
        settings = load_settings(replica_env)
        with ExitStack() as replicas:
            warm = start_replica(replica_env, tmp_path / "warm.log")
            replicas.callback(warm.terminate)
            # A second replica that never served anything: its cache is empty.
            cold_env = {**replica_env, "BROKER_PREWARM_PORTALS": "0"}
            cold = start_replica(cold_env, tmp_path / "cold.log")
            replicas.callback(cold.terminate)
            replicas.callback(valkey.thaw)
            client_id, secret, key = register(
                settings, sim, f"{warm.url}/oauth/callback", slug="demo"
            )
            d = Deployment(settings, sim, sim_url, warm.url, "demo", client_id, secret, key)
            sim.add_portal(HUB)
            assert d.install(HUB).status_code == 200
            token = d.token(HUB).json()["access_token"]
            assert _ready(warm)[0] == 200

            # Redis hung: ready, cached tokens served, and even a forced refresh works.
            valkey.freeze()
            status, body = _ready(warm)
            assert status == 200, body
            assert body["backends"]["redis"] in ("timeout", "redis_unavailable"), body  # type: ignore[index]
            assert metric_value(warm.url, "broker_backend_up", backend="redis") == 0
            _serves(d, warm, token)
            refreshed = d.token(HUB, min_ttl=1500)
            assert refreshed.status_code == 200, refreshed.text
            token = refreshed.json()["access_token"]
            valkey.thaw()

            # PostgreSQL down: the replica holding a token stays ready and serves it; the one
            # with nothing cached is unready (it could not answer a single token request).
            proxy.set("down")
            status, body = _ready(warm)
            assert (status, body["reason"]) == (200, "serving_cached"), body
            _serves(d, warm, token)
            status, body = _ready(cold)
            assert (status, body["code"], body["reason"]) == (
                503,
                "not_ready",
                "postgres_unavailable",
            ), body
            assert metric_value(cold.url, "broker_ready") == 0
            assert metric_value(cold.url, "broker_backend_up", backend="postgres") == 0
            proxy.set("pass")
            deadline = time.monotonic() + 10  # its pool reconnects on the next use
            while (status := _ready(cold)[0]) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status == 200

            # Vault sealed: ready, cached tokens served, the seal reported.
            openbao.root().sys.seal()  # type: ignore[no-untyped-call]  # untyped in types-hvac
            status, body = _ready(warm)
            assert status == 200, body
            assert body["backends"]["vault"] == "vault_sealed", body  # type: ignore[index]
            assert metric_value(warm.url, "broker_backend_up", backend="vault") == 0
            _serves(d, warm, token)
