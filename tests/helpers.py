"""Test helpers: serve an ASGI app on a loopback port, seed a deployment, install portals."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from broker.adapters.vault import VaultAdapter
from broker.app import create_app, open_admin
from broker.config import Secret, Settings
from broker.core.models import App, PortalKey, Role
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls


def database_named(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def admin_sql(url: str, *statements: str) -> None:
    """Run ``statements`` one by one on a connection of their own (CREATE/DROP DATABASE)."""
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def make_env(
    backends: BackendUrls, database_url: str, sim_url: str, **extra: str
) -> dict[str, str]:
    """The BROKER_ settings of a broker on ``backends`` (its own Redis and Vault KV
    prefixes), the database ``database_url`` and the simulator at ``sim_url``."""
    run = secrets.token_hex(4)
    env = {
        "BROKER_DATABASE_URL": database_url,
        "BROKER_REDIS_URL": backends.redis_url,
        "BROKER_REDIS_PREFIX": f"t{run}:",
        "BROKER_VAULT_ADDR": backends.vault_addr,
        "BROKER_VAULT_TOKEN": backends.vault_token,
        "BROKER_VAULT_KV_PREFIX": f"t{run}",
        "BROKER_HUBSPOT_API_URL": sim_url,
        "BROKER_HUBSPOT_APP_URL": sim_url,
        "BROKER_DEFAULT_APP": "demo",
        "BROKER_MIN_TTL_DEFAULT": "60",
        "BROKER_LOG_LEVEL": "DEBUG",
        # Interactive-path tests count upstream calls; refresher tests turn it back on.
        "BROKER_REFRESHER_ENABLED": "false",
        # Replicas stopped by a test exit at once; the drain tests set their own period.
        "BROKER_DRAIN_SECONDS": "0",
    }
    env.update(extra)
    return env


#: What the schemathesis runs of tests/test_contract.py met, printed last by `make fuzz`
#: (tests/conftest.py's terminal summary).
FUZZ_COUNTS: Counter[str] = Counter(
    cases=0,
    server_errors=0,
    schema_violations=0,
    unauthorized_successes=0,
    echoes=0,
    other_failures=0,
    stateful_sequences=0,
    stateful_steps=0,
    stateful_installs=0,
    stateful_failures=0,
    stateful_restarts=0,
)


@contextmanager
def serve_app(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` with uvicorn (lifespan on) in a thread; yields its base URL."""
    config = uvicorn.Config(
        app, host=host, port=0, lifespan="on", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="broker-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the app failed to start (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError("the app did not start in 20 s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` (a sample name, e.g. ``broker_backend_up`` or
    ``..._total``) that the broker at ``url`` exports, with its labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_value(url: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` with exactly these ``labels`` (summed if several match)."""
    found = [v for got, v in metric_samples(url, name) if labels.items() <= got.items()]
    if not found:
        raise AssertionError(f"no sample {name}{labels} at {url}/metrics")
    return sum(found)


@dataclass
class Deployment:
    settings: Settings
    sim: Simulator
    sim_url: str
    url: str
    app: str
    client_id: str
    client_secret: str
    caller_key: str
    #: A signed install link for ``app``, minted on first use (links are reusable until
    #: they expire: one per deployment keeps installs fast).
    link_url: str = field(default="", repr=False)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def token(self, hub_id: int, **params: Any) -> httpx.Response:
        with self.client() as client:
            return client.get(
                f"/v1/portals/{hub_id}/token",
                params={"app": self.app, **params},
                headers={"Authorization": f"Bearer {self.caller_key}"},
            )

    def install(self, hub_id: int, link: str | None = None, **sim_config: Any) -> httpx.Response:
        """Run the browser flow against the simulator (auto consent) for ``hub_id``, from
        the install link ``link`` (by default one minted for ``app``)."""
        self.sim.configure(consent="auto", consent_hub_id=hub_id, **sim_config)
        if link is None:
            if not self.link_url:
                self.link_url = install_link(self.settings, self.app)
            link = self.link_url
        with httpx.Client(timeout=30, follow_redirects=True) as browser:
            return browser.get(link)


@contextmanager
def deployed(
    settings: Settings,
    sim: Simulator,
    sim_url: str,
    *,
    hub_id: int | None = None,
    portals: Iterable[int] = (),
    installed: Iterable[int] = (),
    roles: tuple[str, ...] = (Role.TOKENS_READ.value,),
    **app_fields: Any,
) -> Iterator[Deployment]:
    """A broker serving ``settings`` with app ``demo`` registered (``app_fields`` as in
    :class:`~broker.core.models.App`), a caller with ``roles``, the simulator's ``portals``
    (not installed), and the portals ``installed`` (and ``hub_id``, when given) installed."""
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(
            settings, sim, f"{url}/oauth/callback", slug="demo", roles=roles, **app_fields
        )
        d = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        for hub in portals:
            sim.add_portal(hub)
        for hub in [*installed, *([] if hub_id is None else [hub_id])]:
            sim.add_portal(hub)
            assert d.install(hub).status_code == 200
        yield d


class Deploy(Protocol):
    """The ``deploy`` fixture (tests/conftest.py): a :func:`deployed` broker on the test's
    backends, its settings the test's ``env`` with ``env`` on top; stopped after the test."""

    def __call__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        portals: Iterable[int] = ...,
        installed: Iterable[int] = ...,
        roles: tuple[str, ...] = ...,
        **app_fields: Any,
    ) -> Deployment: ...


def install_link(settings: Settings, app: str, **options: Any) -> str:
    """Mint a signed install link in-process, as ``broker apps install-link`` does."""

    async def mint() -> str:
        async with open_admin(settings) as svc:
            link = await svc.install_links.mint(app, actor="test", **options)
            return link.url

    # In a thread of its own: async tests call this from inside their event loop.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, mint()).result()


def register(
    settings: Settings,
    sim: Simulator,
    redirect_uri: str,
    *,
    slug: str,
    scopes: tuple[str, ...] = ("crm.objects.contacts.read", "oauth"),
    roles: tuple[str, ...] = (Role.TOKENS_READ.value,),
    **app_fields: Any,
) -> tuple[str, str, str]:
    """Register one app in the simulator and the broker, and a caller for it.

    Returns (client_id, client_secret, caller_key)."""
    client_id = f"client-{secrets.token_hex(4)}"
    client_secret = f"secret-{secrets.token_hex(16)}"
    sim.add_app(client_id, [client_secret], [redirect_uri], scopes=list(scopes))

    async def seed() -> str:
        async with open_admin(settings) as ctx:
            await ctx.admin.add_app(
                App(slug, client_id, redirect_uri, scopes=scopes, **app_fields),
                Secret(client_secret),
                actor="test",
            )
            new = await ctx.callers.create(
                f"svc-{secrets.token_hex(3)}",
                roles=list(roles),
                apps=[slug],
                actor="test",
            )
            return new.secret

    return client_id, client_secret, asyncio.run(seed())


def sql(settings: Settings, statement: str, *args: Any) -> list[asyncpg.Record]:
    """Run one SQL statement on the deployment's database (to put a portal in a state, or
    read what a test checks); its rows, if any (jsonb comes back as text)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(settings.database_url.get())
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


async def decrypt(settings: Settings, ciphertext: str, key: PortalKey, kind: str) -> str:
    """A token ciphertext of a portal row, decrypted through Transit as the broker does."""
    vault = VaultAdapter(settings)
    try:
        await vault.login()
        (plain,) = await vault.decrypt([(ciphertext, key.context(kind))])
        return plain
    finally:
        await vault.close()


def audited(settings: Settings, action: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The audit events of ``action`` written so far (newest first), as plain dicts."""

    async def run() -> list[dict[str, Any]]:
        async with open_admin(settings) as svc:
            return [asdict(e) for e in await svc.admin.audit(action=action, limit=limit)]

    return asyncio.run(run())


def run_broker(
    env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``broker ARGS`` as a process with ``env`` as its only BROKER_ settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env={**clean, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#: The caller :func:`admin_key` creates unless told otherwise.
CLI_ADMIN = "cli-admin"


def admin_key(settings: Settings, name: str = CLI_ADMIN, **grants: Any) -> str:
    """A caller with every role and no limit (unless ``grants`` say otherwise), created
    locally as an operator bootstraps the first one."""

    async def create() -> str:
        async with open_admin(settings) as svc:
            new = await svc.callers.create(
                name, roles=grants.pop("roles", [r.value for r in Role]), actor="test", **grants
            )
            return new.secret

    return asyncio.run(create())


def grant_gateway(settings: Settings, name: str | None, paths: list[str], weight: int = 1) -> None:
    """Grants the caller ``name`` (default: the deployment's service caller) these HubSpot
    path prefixes and gateway weight."""

    async def run() -> None:
        async with open_admin(settings) as svc:
            callers = await svc.callers.list()
            target = name or next(c.name for c in callers if c.name.startswith("svc-"))
            await svc.callers.set_gateway(
                target, hubspot_paths=paths, gateway_weight=weight, actor="test"
            )

    asyncio.run(run())
