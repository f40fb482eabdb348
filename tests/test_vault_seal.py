"""A sealed, frozen or killed Vault leaves the replica ready (it keeps serving cached tokens),
and ``/readyz?verbose`` and ``broker_backend_up`` tell the three apart, on a real OpenBao of
the test's own (the session's shared one must stay unsealed and up): ``bao operator seal``,
SIGSTOP and SIGKILL of the actual server process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dedicated_openbao import DedicatedOpenBao, dedicated_openbao
from tests.helpers import Deploy, Deployment, metric_value

HUB = 1_200_001
READYZ_BOUND = 2.0  # broker/core/health.py: each backend check is cut off after 2 s


@pytest.fixture
def openbao(tmp_path: Path) -> Iterator[DedicatedOpenBao]:
    with dedicated_openbao(tmp_path / "openbao") as server:
        yield server


@pytest.fixture
def deployment(deploy: Deploy, openbao: DedicatedOpenBao) -> Deployment:
    """A broker on the dedicated OpenBao with one installed portal whose token is cached."""
    vault = {"BROKER_VAULT_ADDR": openbao.addr, "BROKER_VAULT_TOKEN": openbao.token}
    d = deploy(env=vault, installed=(HUB,))
    first = d.token(HUB)  # decrypted once, now cached in memory
    assert first.status_code == 200, first.text
    ready = httpx.get(f"{d.url}/readyz")
    assert ready.status_code == 200, ready.text
    return d


def _readyz(d: Deployment) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(f"{d.url}/readyz?verbose", timeout=30)
    return response, time.monotonic() - started


def _assert_ready_with_vault(d: Deployment, response: httpx.Response, vault: str) -> None:
    """Ready (it serves cached tokens), with Vault's state for people and Prometheus."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reason"] == "ready"
    assert body["backends"] == {"postgres": "ok", "redis": "ok", "vault": vault, "hubspot": "ok"}
    assert metric_value(d.url, "broker_backend_up", backend="vault") == 0


def _assert_cached_token_served(d: Deployment, expected: str) -> None:
    for _ in range(5):
        again = d.token(HUB)
        assert again.status_code == 200, again.text
        assert again.json()["access_token"] == expected


def test_sealed_vault_is_reported_as_sealed_and_cached_tokens_are_served(
    deployment: Deployment, openbao: DedicatedOpenBao
) -> None:
    cached = deployment.token(HUB).json()["access_token"]
    openbao.root().sys.seal()  # type: ignore[no-untyped-call]  # untyped in types-hvac

    ready, _ = _readyz(deployment)
    _assert_ready_with_vault(deployment, ready, "vault_sealed")
    _assert_cached_token_served(deployment, cached)


def test_frozen_then_killed_vault_is_reported_within_the_bound(
    deployment: Deployment, openbao: DedicatedOpenBao
) -> None:
    cached = deployment.token(HUB).json()["access_token"]

    # SIGSTOP: connections are accepted but never answered. The adapter's own timeout
    # (BROKER_VAULT_TIMEOUT, 5 s) is longer than the probe's bound, so /readyz cuts the check
    # off at 2 s and says "timeout" rather than hanging the caller.
    openbao.freeze()
    ready, took = _readyz(deployment)
    _assert_ready_with_vault(deployment, ready, "timeout")
    assert READYZ_BOUND <= took < 4.5, took  # cut at 2 s, not at the 5 s Vault timeout
    _assert_cached_token_served(deployment, cached)

    # SIGKILL: connections are refused, which is told apart from a seal at once.
    openbao.kill()
    ready, took = _readyz(deployment)
    _assert_ready_with_vault(deployment, ready, "vault_unavailable")
    assert took < READYZ_BOUND, took
    _assert_cached_token_served(deployment, cached)
