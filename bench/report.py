"""What a bench run knows and prints: its sizes, its context, the one table, the machine
description, and the three ratio lines the output ends with."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls

RATIOS = ("hot_path_vs_starlette", "hot_path_vs_raw_asgi", "hot_path_vs_openbao_kv")


@dataclass(frozen=True)
class Size:
    """How big each part is; :data:`FULL` is ``make bench``, :data:`SMOKE` the test's."""

    seconds: float = 10.0
    warmup: float = 2.0
    connections: int = 50
    cold_serial: int = 1000
    cold_concurrent: int = 3000
    herd_callers: int = 300
    herd_rounds: int = 5
    herd_latency_ms: int = 250
    scale: tuple[int, ...] = (1_000, 10_000)  # 100,000+: sections 7 (steady) and 8 (memory)
    drain_cap: float = 120.0
    refresh_portals: int = 5000
    caller_rate: float = 100.0
    abuse_seconds: float = 10.0
    abuse_rate: float = 1000.0
    normal_rate: float = 200.0
    plan_rows: int = 1_000_000
    steady_portals: int = 250_000
    steady_lifetime: float = 3600.0
    steady_seconds: float = 600.0
    steady_every: float = 30.0
    steady_caller_rate: float = 50.0
    #: The simulator's token endpoint limit per app during the steady state (None: none).
    steady_token_limit: float | None = None
    memory_portals: int = 100_000


FULL = Size()
SMOKE = Size(
    seconds=1.0,
    warmup=0.5,
    connections=4,
    cold_serial=20,
    cold_concurrent=40,
    herd_callers=12,
    herd_rounds=1,
    herd_latency_ms=50,
    scale=(100,),
    drain_cap=30.0,
    refresh_portals=100,
    caller_rate=20.0,
    abuse_seconds=1.0,
    abuse_rate=200.0,
    normal_rate=50.0,
    plan_rows=20_000,
    steady_portals=300,
    steady_lifetime=30.0,
    steady_seconds=6.0,
    steady_every=2.0,
    steady_caller_rate=20.0,
    memory_portals=200,
)


@dataclass(frozen=True)
class Row:
    section: str
    what: str
    result: str
    detail: str = ""


@dataclass
class Bench:
    """Everything the scenarios share; they append rows, notes and ratios."""

    urls: BackendUrls
    sim: Simulator
    sim_url: str
    size: Size
    workdir: Path
    use_wrk: bool
    target_cpus: set[int] | None = None
    load_cpus: set[int] | None = None
    bao_pid: int | None = None
    #: A checkout to compare with (``--baseline-tree``): section 6 drains it beside ours.
    baseline_tree: Path | None = None
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    #: Requests per CPU-second of each hot-path server: robust to a busy machine.
    efficiency: dict[str, float] = field(default_factory=dict)
    #: Other ``name: value`` lines the output ends with (after the ratios), in run order.
    figures: dict[str, float] = field(default_factory=dict)

    def add(self, section: str, what: str, result: str, detail: str = "") -> None:
        self.rows.append(Row(section, what, result, detail))
        print(f"  {section} | {what} | {result} | {detail}", flush=True)


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    kb = next((int(line.split()[1]) for line in meminfo.splitlines() if "MemTotal" in line), 0)
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": f"{kb / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "os": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load average (1, 5, 15 min) at the end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(bench: Bench, *, load_tool: str, elapsed: float) -> str:
    info = machine()
    lines = ["# hubspot-token-broker benchmarks", ""]
    lines += [f"- {name}: {value}" for name, value in info.items()]
    lines += [f"- load generator: {load_tool}", f"- bench wall time: {elapsed:.0f} s", ""]
    lines += ["| section | measurement | result | detail |", "|---|---|---|---|"]
    lines += [
        f"| {_cell(r.section)} | {_cell(r.what)} | {_cell(r.result)} | {_cell(r.detail)} |"
        for r in sorted(bench.rows, key=lambda row: row.section)  # stable: run order kept
    ]
    hot = bench.efficiency.get("hot")
    if hot:
        per_cpu = ", ".join(
            f"{name.removeprefix('hot_path_')} {hot / bench.efficiency[name]:.3f}"
            for name in RATIOS
            if bench.efficiency.get(name)
        )
        bench.notes.append(f"the same ratios per CPU-second of the server: {per_cpu}")
    if bench.notes:
        lines += ["", *(f"- {note}" for note in bench.notes)]
    lines += [""]
    lines += [f"{name}: {bench.ratios[name]:.3f}" for name in RATIOS if name in bench.ratios]
    lines += [f"{name}: {value:.3g}" for name, value in bench.figures.items()]
    return "\n".join(lines) + "\n"


def ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def count(value: float) -> str:
    return f"{value:,.0f}"
