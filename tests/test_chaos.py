"""The fault scenarios of tests/chaos at reduced size (``make chaos`` runs them full size)."""

from __future__ import annotations

import pytest

from broker.dev.simulator import Simulator
from tests.chaos import k8s
from tests.chaos.scenarios import SCENARIOS, SMALL

pytestmark = pytest.mark.slow  # `make test-slow`


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, env: dict[str, str], sim: Simulator, sim_url: str) -> None:
    result = SCENARIOS[name](env, sim, sim_url, SMALL)
    print(result.line())
    assert result.passed, result.line()


def test_kubernetes_shaped_harness(sim: Simulator, sim_url: str) -> None:
    """Rolling restart, Redis down, Vault sealed and unreachable, Sentinel and PostgreSQL
    failovers, behind a readiness-polling balancer, at reduced size (``make chaos``: full)."""
    results = k8s.run(sim, sim_url, k8s.SMALL)
    for result in results:
        print(result.line())
    assert [r.name for r in results] == list(k8s.SCENARIOS)
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)
