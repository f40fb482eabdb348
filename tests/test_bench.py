"""``make bench`` at a trivial size, so the harness does not rot: every section runs on real
processes against the session's backends and the simulator, and the report has its table
and ratio lines with sane numbers. Speed is not asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.__main__ import run_bench
from bench.report import RATIOS, SMOKE
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls

pytestmark = pytest.mark.slow  # `make test-slow`


def _result(report: str, section: str, measurement: str) -> str:
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if len(cells) == 4 and cells[0] == section and measurement in cells[1]:
            return cells[2]
    raise AssertionError(f"no row {section!r} / {measurement!r} in:\n{report}")


# Every section on real processes, six of them: minutes on a shared 2-core machine.
@pytest.mark.timeout(300)
def test_bench_smoke(backends: BackendUrls, sim: Simulator, sim_url: str, tmp_path: Path) -> None:
    output = tmp_path / "results.md"
    report = run_bench(backends, sim, sim_url, SMOKE, output=output)

    assert output.read_text() == report
    for key in ("cpu", "cores", "memory", "python", "date", "load generator"):
        assert f"- {key}: " in report
    ratios = dict(re.findall(r"^(hot_path_vs_\w+): ([0-9.]+)$", report, re.MULTILINE))
    assert list(ratios) == list(RATIOS)
    lines = report.rstrip().splitlines()
    tail = lines[lines.index(f"{RATIOS[0]}: {ratios[RATIOS[0]]}") :]
    assert tail[:3] == [f"{k}: {ratios[k]}" for k in RATIOS]
    assert all(0.01 < float(r) < 100 for r in ratios.values()), ratios
    figures = dict(line.split(": ") for line in tail[3:])
    assert list(figures) == [
        "hot_path_p99_ms",
        "cold_path_rps_50",
        "cold_path_p99_ms_50",
        "transit_calls_per_miss",
        "refresh_cpu_ms",
        "refreshes_per_s_replica",
        "scale_250k_below_min_ttl",
        "scale_250k_interactive_pct",
        "cached_token_bytes",
        "gateway_added_p50_ms",
        "gateway_added_p99_ms",
        "gateway_rps_50",
    ]
    assert float(figures["hot_path_p99_ms"]) > 0
    assert float(figures["refresh_cpu_ms"]) > 0
    assert float(figures["refreshes_per_s_replica"]) > 0
    assert float(figures["cold_path_rps_50"]) > 0
    assert float(figures["gateway_rps_50"]) > 0
    # An RSS delta over 200 tokens is noise-sized: only its presence is checked here.
    assert re.fullmatch(r"-?[0-9.e+]+", figures["cached_token_bytes"]), figures
    # Concurrent misses share Transit batches: fewer calls than misses even at smoke size.
    assert 0 < float(figures["transit_calls_per_miss"]) < 1, figures

    for measurement in ("cached", "Starlette", "raw ASGI", "OpenBao"):
        line = _result(report, "1 hot path", measurement)
        found = re.fullmatch(r"([0-9,]+) req/s · p50 ([0-9.]+) ms · p99 ([0-9.]+) ms", line)
        assert found, line
        rps, p50, p99 = (float(group.replace(",", "")) for group in found.groups())
        assert rps > 0
        assert 0 < p50 <= p99
    assert re.fullmatch(r"p50 [0-9.]+ ms · p99 [0-9.]+ ms", _result(report, "2 cold path", "1 "))
    assert _result(report, "3 herd", "upstream refresh calls") == "1"
    assert _result(report, "4 scale", "expires_in < min_ttl") == "0"
    assert re.fullmatch(r"[0-9]+ → [0-9]+ MiB", _result(report, "4 scale", "RSS"))
    assert re.match(r"[0-9,]+ req/s sent", _result(report, "5 abuse", "abusive"))
    assert _result(report, "7 steady", "claim_due at") == "index scan"
    assert _result(report, "7 steady", "expires_in < min_ttl") == "0"
    assert figures["scale_250k_below_min_ttl"] == "0"
    assert re.fullmatch(r"[0-9,]+ refreshes/s", _result(report, "7 steady", "refreshes/s (needed"))
    assert re.match(r"[0-9,]+ refreshes/s \(baseline [0-9,]+\)", _result(report, "6 refresh", "/s"))
    assert "ms (baseline" in _result(report, "6 refresh", "CPU per proactive refresh")
    assert re.fullmatch(r"-?[0-9,]+ B per cached token", _result(report, "8 memory", "RSS"))
    assert re.fullmatch(
        r"p50 \+-?[0-9.]+ ms · p99 \+-?[0-9.]+ ms at [0-9]+ req/s",
        _result(report, "9 gateway", "added"),
    )
    assert "FAILURE" not in report
