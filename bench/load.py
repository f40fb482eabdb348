"""Load from a second process: ``wrk`` when installed (Debian's ``wrk``), else the Python
client of :mod:`bench.client`. Both report requests, req/s, p50 and p99 the same way.

Credentials (a caller key, the OpenBao token) go to ``wrk`` inside a Lua script written to a
private temporary file, never on its command line, which every local user can read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import spawn, stop

_WRK_SCRIPT = """
wrk.method = "GET"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors":%d,"non_2xx":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class LoadResult:
    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float = 0.0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    violations: int = 0
    min_margin: float | None = None
    distinct_tokens: int = 0

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "absent"
    done = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    return (done.stdout or done.stderr).split("Copyright")[0].strip()


def run_wrk(
    url: str,
    *,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    cpus: set[int] | None,
    threads: int = 1,
) -> LoadResult:
    """One ``wrk`` run (closed loop, keep-alive) against ``url``."""
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed")
    lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    fd, script = tempfile.mkstemp(prefix="bench-wrk-", suffix=".lua")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(_WRK_SCRIPT.format(headers=lines))
        argv = [path, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        argv += ["--timeout", "10s", "-s", script, url]
        process = spawn(argv, cpus=cpus)
        try:
            out, _ = process.communicate(timeout=seconds + 60)
        finally:
            stop(process)
    finally:
        Path(script).unlink(missing_ok=True)
    data = json.loads(out.decode().strip().splitlines()[-1])
    secs = data["duration_us"] / 1e6
    non_2xx = data["non_2xx"]
    return LoadResult(
        tool="wrk",
        requests=data["requests"],
        seconds=secs,
        rps=data["requests"] / secs,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=data["errors"],
        statuses={"200": data["requests"] - non_2xx, "other": non_2xx} if non_2xx else {},
    )


class ClientProcess:
    """:mod:`bench.client` in a separate process; :meth:`result` waits for its answer. For
    an open-ended ``rate`` run (``duration`` None), :meth:`result` first closes its stdin."""

    def __init__(self, spec: dict[str, Any], *, cpus: set[int] | None = None) -> None:
        self._process = spawn(
            [sys.executable, "-m", "bench.client"], cpus=cpus, stdin=subprocess.PIPE
        )
        assert self._process.stdin is not None
        self._process.stdin.write((json.dumps(spec) + "\n").encode())
        self._process.stdin.flush()

    def result(self, timeout: float = 1200.0) -> LoadResult:
        try:
            out, _ = self._process.communicate(timeout=timeout)  # closes stdin first
        finally:
            stop(self._process)
        if self._process.returncode != 0 or not out.strip():
            raise RuntimeError(f"the load client failed (exit {self._process.returncode})")
        return LoadResult.from_json(json.loads(out.decode().strip().splitlines()[-1]))

    def abort(self) -> None:
        stop(self._process, grace=2)


def run_client(spec: dict[str, Any], *, cpus: set[int] | None = None) -> LoadResult:
    return ClientProcess(spec, cpus=cpus).result()


def closed_loop(
    host_port: tuple[str, int],
    path: str,
    *,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    cpus: set[int] | None,
    use_wrk: bool,
) -> LoadResult:
    """``connections`` keep-alive connections for ``seconds``: wrk, or the Python client."""
    host, port = host_port
    if use_wrk:
        url = f"http://{host}:{port}{path}"
        return run_wrk(url, headers=headers, connections=connections, seconds=seconds, cpus=cpus)
    spec = {
        "mode": "duration",
        "hosts": [[host, port]],
        "targets": [{"path": path, "headers": headers}],
        "connections": connections,
        "duration": seconds,
    }
    return run_client(spec, cpus=cpus)
