"""The fault scenarios of tests/chaos at reduced size (``make chaos`` runs them full size)."""

from __future__ import annotations

import pytest

from broker.dev.simulator import Simulator
from tests.chaos.scenarios import SCENARIOS, SMALL


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, env: dict[str, str], sim: Simulator, sim_url: str) -> None:
    result = SCENARIOS[name](env, sim, sim_url, SMALL)
    print(result.line())
    assert result.passed, result.line()
