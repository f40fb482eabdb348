"""A load balancer shaped like a Kubernetes Service behind an endpoints controller: it polls
each replica's ``/readyz`` every second (a 2.5 s timeout; two failures in a row take a
routed replica out, one success puts it back, as the chart's readinessProbe) and sends each
request to a ready one (round robin).

It retries nothing: a request it forwarded that fails is a failed request for the caller.
With no ready replica it answers 503 ``no_ready_endpoints``. It speaks HTTP/1.1 keep-alive
to callers and to replicas (and honours a replica's ``Connection: close`` by reconnecting),
so a replica that drains by telling callers to reconnect is exercised as in a cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from tests.chaos.cluster import free_port

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host"}
)


class Balancer:
    def __init__(
        self, *, poll_seconds: float = 1.0, timeout: float = 2.5, failure_threshold: int = 2
    ) -> None:
        # Like the chart's readinessProbe: a slow probe on a busy machine is not unready.
        self._poll, self._timeout, self._threshold = poll_seconds, timeout, failure_threshold
        self._endpoints: dict[str, bool] = {}  # replica URL -> routed
        self._failures: dict[str, int] = {}  # consecutive failed probes
        self._lock = threading.Lock()
        self._turn: Iterator[int] = itertools.count()
        self._client: httpx.AsyncClient | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="balancer", daemon=True)

    # --- the endpoints controller ------------------------------------------------------------
    def add(self, url: str) -> None:
        """A new pod: routed to once its readiness passes."""
        with self._lock:
            self._endpoints.setdefault(url, False)

    def remove(self, url: str) -> None:
        with self._lock:
            self._endpoints.pop(url, None)

    def ready(self) -> list[str]:
        with self._lock:
            return [url for url, ok in self._endpoints.items() if ok]

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while url not in self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never became a ready endpoint")
            time.sleep(0.1)

    async def _watch(self) -> None:
        assert self._client is not None
        while True:
            with self._lock:
                urls = list(self._endpoints)
            results = await asyncio.gather(*(self._probe(u) for u in urls))
            with self._lock:
                for url, ok in zip(urls, results, strict=True):
                    failures = 0 if ok else self._failures.get(url, 0) + 1
                    self._failures[url] = failures
                    if url in self._endpoints:
                        self._endpoints[url] = failures == 0 or (
                            self._endpoints[url] and failures < self._threshold
                        )
            await asyncio.sleep(self._poll)

    async def _probe(self, url: str) -> bool:
        assert self._client is not None
        try:
            answer = await self._client.get(f"{url}/readyz", timeout=self._timeout)
        except httpx.TransportError:
            return False
        return answer.status_code == 200

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Balancer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the balancer did not start")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    # --- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        ready = self.ready()
        if not ready:
            await _answer(send, 503, b'{"code": "no_ready_endpoints"}')
            return
        target = ready[next(self._turn) % len(ready)]
        query = f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        assert self._client is not None
        try:
            answer = await self._client.request(
                scope["method"], f"{target}{scope['path']}{query}", headers=headers, content=body
            )
        except httpx.TransportError as exc:
            await _answer(send, 502, f'{{"code": "{type(exc).__name__}"}}'.encode())
            return
        out = [(k, v) for k, v in answer.headers.raw if k.lower() not in _HOP_BY_HOP]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
        await send({"type": "http.response.body", "body": answer.content})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        watcher: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                limits = httpx.Limits(max_connections=400, max_keepalive_connections=200)
                self._client = httpx.AsyncClient(timeout=60, limits=limits)
                watcher = asyncio.create_task(self._watch())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if watcher is not None:
                    watcher.cancel()
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
