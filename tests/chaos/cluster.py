"""A cluster of real broker processes for fault scenarios: ``python -m broker serve``
replicas on one database, with a fault proxy between them and Redis (and, on request,
PostgreSQL), the HubSpot simulator in this process, and helpers to install portals and fire
concurrent callers.

Every token a caller gets is checked against the simulator: HubSpot knows it and counts at
least the ``expires_in`` the broker answered (1 s for rounding), and at least the caller's
``min_ttl`` unless the answer says it is degraded. What fails is kept in
``Cluster.violations``; every scenario reports them (``tests.chaos.scenarios``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator
from broker.dev.stack._processes import die_with_parent
from tests.faultproxy import FaultProxy
from tests.helpers import install_link, register


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stopped(self) -> bool:
        """Whether the process is stopped (SIGSTOP), from /proc."""
        raw = Path(f"/proc/{self.process.pid}/stat").read_text()
        return raw[raw.rindex(")") + 2] == "T"

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)

    def terminate(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_replica(
    env: dict[str, str], log: Path, *, crash_point: str = "", pause: bool = False
) -> Replica:
    """Start ``broker serve`` on a free port and wait until ``/readyz`` answers 200; with
    ``crash_point``, one that SIGKILLs itself at that protocol step, or SIGSTOPs itself once
    with ``pause`` (broker.dev.faults)."""
    port = free_port()
    command = ["broker.dev.faults", crash_point] if crash_point else ["broker", "serve"]
    if pause:
        command.append("--pause")
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", *command, "--port", str(port)],
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            # A harness killed before its clean-up (make chaos interrupted) leaves no replica.
            preexec_fn=die_with_parent(),  # armed in the main thread, which outlives it
        )
    url = f"{'https' if env.get('BROKER_TLS_CERT_FILE') else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited: {log.read_text()[-2000:]}")
        try:
            # Readiness only; the TLS tests check the certificate themselves.
            if httpx.get(f"{url}/readyz", timeout=1, verify=False).status_code == 200:  # noqa: S501
                return Replica(url, process, log)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"broker did not become ready: {log.read_text()[-2000:]}")


@dataclass
class Answer:
    status: int
    token: str | None
    seconds: float
    body: dict[str, Any] = field(default_factory=dict)


#: Every cluster opened, so each scenario's runner can collect what its asks found.
OPENED: list[Cluster] = []


@dataclass
class Cluster:
    env: dict[str, str]
    sim: Simulator
    sim_url: str
    redis_proxy: FaultProxy
    workdir: Path
    #: PostgreSQL as the test itself reaches it (never through ``db_proxy``).
    database_url: str
    db_proxy: FaultProxy | None = None
    replicas: list[Replica] = field(default_factory=list)
    key: str = ""
    app: str = "demo"
    checked: int = 0
    violations: list[str] = field(default_factory=list)
    #: Portals whose grant the scenario killed at HubSpot: their tokens die with it, and the
    #: scenario bounds how long replicas may still serve them (not a violation here).
    killed: set[int] = field(default_factory=set)

    def check(self, hub: int, min_ttl: int, body: dict[str, Any]) -> None:
        """What HubSpot says of a token a caller was given (see the module's docstring)."""
        self.checked += 1
        info = self.sim.access_token_info(str(body.get("access_token")))
        reported = int(body.get("expires_in", 0))
        if info is None or not info.active:
            if hub in self.killed:
                return
            self.violations.append(f"hub {hub}: a token HubSpot does not honour")
        elif info.expires_in < reported - 1:
            self.violations.append(
                f"hub {hub}: expires_in {reported} s, HubSpot says {info.expires_in} s"
            )
        elif info.expires_in < min_ttl - 1 and body.get("degraded") is not True:
            self.violations.append(
                f"hub {hub}: {info.expires_in} s left for min_ttl {min_ttl}, not degraded"
            )

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)

    def add_replica(self, *, crash_point: str = "", pause: bool = False, **extra: str) -> Replica:
        index = len(self.replicas)
        log = self.workdir / f"replica-{index}.log"
        replica = start_replica({**self.env, **extra}, log, crash_point=crash_point, pause=pause)
        self.replicas.append(replica)
        return replica

    def register(self) -> None:
        _, _, self.key = register(
            self.settings,
            self.sim,
            f"{self.replicas[0].url}/oauth/callback",
            slug=self.app,
            roles=("tokens:read", "portals:admin"),
        )

    def install(self, hubs: list[int], *, via: Replica | None = None) -> None:
        url = (via or self.replicas[0]).url
        # A signed link (any replica accepts it), opened on the chosen replica.
        query = urlsplit(install_link(self.settings, self.app)).query
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            for hub in hubs:
                self.sim.add_portal(hub)
                self.sim.configure(consent="auto", consent_hub_id=hub)
                page = browser.get(f"{url}/oauth/install?{query}")
                if page.status_code != 200:
                    raise RuntimeError(f"install of {hub} failed: {page.status_code}")

    def ask(self, replica: Replica, hub: int, min_ttl: int = 0, timeout: float = 30) -> Answer:
        started = time.monotonic()
        try:
            response = httpx.get(
                f"{replica.url}/v1/portals/{hub}/token",
                params={"app": self.app, "min_ttl": min_ttl},
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=timeout,
            )
        except httpx.TransportError:
            return Answer(0, None, time.monotonic() - started)
        body = response.json()
        if response.status_code == 200:
            self.check(hub, min_ttl, body)
        return Answer(
            response.status_code, body.get("access_token"), time.monotonic() - started, body
        )

    def herd(self, hub: int, callers: int, min_ttl: int) -> list[Answer]:
        return asyncio.run(self._herd(hub, callers, min_ttl))

    async def _herd(self, hub: int, callers: int, min_ttl: int) -> list[Answer]:
        limits = httpx.Limits(max_connections=callers)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(i: int) -> Answer:
                url = self.replicas[i % len(self.replicas)].url
                started = time.monotonic()
                try:
                    response = await client.get(
                        f"{url}/v1/portals/{hub}/token",
                        params={"app": self.app, "min_ttl": min_ttl},
                        headers={"Authorization": f"Bearer {self.key}"},
                    )
                except httpx.TransportError:
                    return Answer(0, None, time.monotonic() - started)
                body = response.json()
                if response.status_code == 200:
                    self.check(hub, min_ttl, body)
                return Answer(
                    response.status_code,
                    body.get("access_token"),
                    time.monotonic() - started,
                    body,
                )

            return await asyncio.gather(*(one(i) for i in range(callers)))

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return await conn.fetch(query, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    def close(self) -> None:
        for replica in self.replicas:
            replica.terminate()
        self.redis_proxy.close()
        if self.db_proxy is not None:
            self.db_proxy.close()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the replicas' logs, read by now


def open_cluster(
    env: dict[str, str],
    sim: Simulator,
    sim_url: str,
    *,
    replicas: int,
    postgres_proxy: bool = False,
    **extra: str,
) -> Cluster:
    """Replicas talk to Redis through a fault proxy, and to PostgreSQL through another
    with ``postgres_proxy``."""
    redis = httpx.URL(env["BROKER_REDIS_URL"])
    proxy = FaultProxy(redis.host, redis.port or 6379)
    cluster_env = {
        **env,
        **extra,
        "BROKER_REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis.path or '/0'}",
        "BROKER_LOG_LEVEL": "INFO",
    }
    database_url = env["BROKER_DATABASE_URL"]
    db_proxy = None
    if postgres_proxy:
        db = urlsplit(database_url)
        db_proxy = FaultProxy(db.hostname or "127.0.0.1", db.port or 5432)
        netloc = db.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{db_proxy.port}"
        proxied = db._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        cluster_env["BROKER_DATABASE_URL"] = proxied.geturl()
    workdir = Path(tempfile.mkdtemp(prefix="htb-chaos-"))
    cluster = Cluster(cluster_env, sim, sim_url, proxy, workdir, database_url, db_proxy)
    OPENED.append(cluster)
    try:
        for _ in range(replicas):
            cluster.add_replica()
        cluster.register()
    except BaseException:
        cluster.close()
        raise
    return cluster


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
