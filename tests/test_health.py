"""Probes and metrics on a real app: ``/livez`` needs nothing, ``/readyz`` names the failing
backend, ``/metrics`` exposes the broker's series without any hub_id or token."""

from __future__ import annotations

import re

import httpx

from broker.app import create_app
from broker.config import load_settings
from tests.helpers import serve_app


def test_probes_and_metrics(env: dict[str, str]) -> None:
    with serve_app(create_app(load_settings(env))) as url:
        live = httpx.get(f"{url}/livez")
        assert live.status_code == 200
        assert live.json() == {"status": "alive"}
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "vault": "ok"}
        metrics = httpx.get(f"{url}/metrics")
        assert metrics.status_code == 200
        for series in (
            "broker_token_requests_total",
            "broker_refreshes_total",
            "broker_fenced_writes_total",
            "broker_lock_wait_seconds_bucket",
        ):
            assert series in metrics.text


def test_readyz_names_the_backend_that_is_down(env: dict[str, str]) -> None:
    settings = load_settings({**env, "BROKER_REDIS_URL": "redis://127.0.0.1:9/0"})
    with serve_app(create_app(settings)) as url:
        assert httpx.get(f"{url}/livez").status_code == 200  # liveness ignores backends
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"
        body = ready.json()
        assert body["code"] == "not_ready"
        assert body["checks"] == {"postgres": "ok", "redis": "redis_unavailable", "vault": "ok"}


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
