"""The Python load client: ``python -m bench.client`` reads one JSON spec line on stdin, runs
it, and prints one JSON result line on stdout. It always runs as its own process, never in
the process of the server it measures.

A minimal HTTP/1.1 keep-alive client on asyncio streams (uvloop when installed): a
general-purpose client such as httpx costs several times more CPU per request, which would
make the load generator, not the server, the bottleneck. Modes:

* ``duration``: ``connections`` closed loops for ``duration`` seconds (the ``wrk`` fallback);
* ``once``: every target exactly once, ``connections`` at a time (cold path, cache warming);
* ``rate``: open loop at ``rate`` requests/s, latency measured from each request's *scheduled*
  time so queueing is counted; runs for ``duration`` seconds or until stdin closes;
* ``herd``: ``connections`` connections opened and warmed first, then one request each, all
  released at once.

With ``check``, every 200 body is parsed: ``expires_in`` below the target's ``min_ttl`` is a
violation, and the distinct access tokens are counted (a fingerprint, never the token).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from typing import Any


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, close = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value == b"chunked"
            elif name == b"connection":
                close = value == b"close"
        body = await (self._chunked() if chunked else self._reader.readexactly(length))
        if close:
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while size := int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self._reader.readexactly(size + 2))
        await self._reader.readuntil(b"\r\n")
        return b"".join(part[:-2] for part in parts)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class Targets:
    """The requests to make: an explicit list, or ``template`` expanded lazily over a range of
    hub ids and a list of ``min_ttl`` values (100,000 portals need no 100,000-entry spec)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._list: list[dict[str, Any]] = spec.get("targets", [])
        template = spec.get("template")
        self._template: dict[str, Any] = template or {}
        lo, hi = self._template.get("hubs", (0, 0))
        self._lo, self._hubs = int(lo), int(hi) - int(lo)
        self._ttls: list[int] = self._template.get("min_ttls", [0])

    def __len__(self) -> int:
        return len(self._list) if self._list else self._hubs * len(self._ttls)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._list:
            return self._list[index]
        hub, min_ttl = self._lo + index // len(self._ttls), self._ttls[index % len(self._ttls)]
        path = self._template["path"].format(hub=hub, min_ttl=min_ttl)
        return {"path": path, "headers": self._template.get("headers", {}), "min_ttl": min_ttl}


def _raw(target: dict[str, Any], host: str, port: int) -> bytes:
    headers = {"Host": f"{host}:{port}", **target.get("headers", {})}
    lines = [f"GET {target['path']} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


class Run:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.hosts = [(str(h), int(p)) for h, p in spec["hosts"]]
        self.targets = Targets(spec)
        self.check = bool(spec.get("check"))
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.violations = 0
        self.margin: float | None = None
        self.tokens: set[str] = set()
        self.stop = asyncio.Event()

    async def one(self, conn: Connection, target: dict[str, Any], started: float) -> None:
        try:
            status, body = await conn.request(_raw(target, conn.host, conn.port))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            conn.close()
            self.errors += 1
            return
        self.latencies.append((time.perf_counter() - started) * 1000)
        self.statuses[status] += 1
        if self.check and status == 200:
            answer = json.loads(body)
            self.tokens.add(hashlib.sha256(answer["access_token"].encode()).hexdigest()[:12])
            margin = answer["expires_in"] - (target.get("min_ttl") or 0)
            self.margin = margin if self.margin is None else min(self.margin, margin)
            self.violations += margin < 0

    def conns(self, count: int) -> list[Connection]:
        return [Connection(*self.hosts[i % len(self.hosts)]) for i in range(count)]

    async def duration(self) -> None:
        deadline = time.perf_counter() + float(self.spec["duration"])
        turn = iter(range(10**12))

        async def loop(conn: Connection) -> None:
            while (now := time.perf_counter()) < deadline:
                await self.one(conn, self.targets[next(turn) % len(self.targets)], now)

        await asyncio.gather(*(loop(c) for c in self.conns(int(self.spec["connections"]))))

    async def once(self) -> None:
        queue = iter(range(len(self.targets)))

        async def loop(conn: Connection) -> None:
            for index in queue:
                await self.one(conn, self.targets[index], time.perf_counter())

        await asyncio.gather(*(loop(c) for c in self.conns(int(self.spec["connections"]))))

    async def rate(self) -> None:
        pool: asyncio.Queue[Connection] = asyncio.Queue()
        for conn in self.conns(int(self.spec["connections"])):
            pool.put_nowait(conn)
        interval = 1.0 / float(self.spec["rate"])
        limit = self.spec.get("duration")
        start = time.perf_counter()
        pending: set[asyncio.Task[None]] = set()
        rng = random.Random(self.spec.get("seed", 1))  # noqa: S311 - load mix, not crypto

        async def fire(target: dict[str, Any], scheduled: float) -> None:
            conn = await pool.get()
            try:
                await self.one(conn, target, scheduled)
            finally:
                pool.put_nowait(conn)

        for i in range(10**12):
            scheduled = start + i * interval
            if self.stop.is_set() or (limit is not None and scheduled - start >= limit):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), scheduled - time.perf_counter())
            target = self.targets[rng.randrange(len(self.targets))]
            task = asyncio.create_task(fire(target, scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)

    async def herd(self) -> None:
        conns = self.conns(int(self.spec["connections"]))
        warm = {"path": self.spec["warm_path"]}
        await asyncio.gather(*(c.request(_raw(warm, c.host, c.port)) for c in conns))
        go = asyncio.Event()

        async def wait_then_fire(conn: Connection, target: dict[str, Any]) -> None:
            await go.wait()
            await self.one(conn, target, time.perf_counter())

        tasks = [
            asyncio.create_task(wait_then_fire(c, self.targets[i % len(self.targets)]))
            for i, c in enumerate(conns)
        ]
        await asyncio.sleep(0.2)  # every task is parked on the event
        go.set()
        await asyncio.gather(*tasks)

    def result(self, seconds: float) -> dict[str, Any]:
        lat = self.latencies
        return {
            "tool": "python",
            "requests": len(lat),
            "seconds": seconds,
            "rps": len(lat) / seconds if seconds > 0 else 0.0,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat, default=0.0),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "errors": self.errors,
            "violations": self.violations,
            "min_margin": self.margin,
            "distinct_tokens": len(self.tokens),
        }


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    run = Run(spec)
    if spec["mode"] == "rate" and spec.get("duration") is None:
        loop = asyncio.get_running_loop()

        def watch_stdin() -> None:
            sys.stdin.read()  # returns at EOF: the bench closed our stdin
            loop.call_soon_threadsafe(run.stop.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
    started = time.perf_counter()
    await getattr(run, spec["mode"])()
    return run.result(time.perf_counter() - started)


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    try:
        import uvloop

        result = uvloop.run(main_async(spec))
    except ImportError:
        result = asyncio.run(main_async(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
