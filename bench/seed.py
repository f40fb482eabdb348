"""Deployments and bulk seeding.

:func:`deploy` makes a fresh database (migrated), registers one app at the simulator and the
broker, and creates callers, as an operator would. :func:`seed_portals` installs many portals
through a **bulk path** that stores exactly what the install flow stores
(broker/core/install.py):

1. real grants from the simulator: ``issue_code`` (a marketplace-style install) then the
   token endpoint's own handler, in process (``Simulator.handle_token``), so every refresh
   token is one the simulator will honour;
2. both tokens encrypted with the broker's ``VaultAdapter.encrypt`` under each portal's
   derivation context (``PortalKey.context``), in Transit batches;
3. each access token's audit fingerprint (``Keyring.fingerprint``, Transit hmac batches),
   stored with the row as installs and refreshes store it (``fingerprints=False``: rows as
   an older release wrote them, without one);
4. rows written with one ``COPY`` into ``portals``, expiry on the database clock taken before
   the grants were minted and the refresh time from ``broker.core.refresh_policy.schedule``.

It skips the per-install ``events`` row and audit event, which are not read on any path
measured here.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.procs import Server, free_port
from broker.adapters.vault import VaultAdapter
from broker.app import open_admin, run_migrations
from broker.config import Secret, Settings, load_settings
from broker.core.models import App, PortalKey, Role
from broker.core.ports import AuditSink, KeySchedule
from broker.core.refresh_policy import schedule
from broker.core.signing import Keyring
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls

APP = "bench"
SCOPES = ("crm.objects.contacts.read", "oauth")
_BATCH = 100  # portals per Transit call (two tokens each: 400 JSON strings)


@dataclass
class Deployment:
    admin_url: str
    database_url: str
    env: dict[str, str]
    client_id: str
    client_secret: str
    redirect_uri: str
    callers: list[str] = field(default_factory=list, repr=False)

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)

    def auth(self, index: int = 0) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.callers[index]}"}


def start_broker(
    d: Deployment, log: Path, *, cpus: set[int] | None = None, tree: Path | None = None, **env: str
) -> Server:
    """``python -m broker serve``: one uvicorn worker, ready once ``/readyz`` answers 200.
    ``tree``: the broker of that checkout instead of this one (``-P``: not the working
    directory's)."""
    port = free_port()
    python = [sys.executable] if tree is None else [sys.executable, "-P"]
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    return Server(
        log.stem,
        [*python, "-m", "broker", "serve", "--port", str(port)],
        port=port,
        log=log,
        env={**os.environ, **d.env, **env},
        cpus=cpus,
        ready_path="/readyz",
    )


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def deploy(
    urls: BackendUrls, sim: Simulator, sim_url: str, *, callers: int = 1, **env: str
) -> Deployment:
    """A fresh, migrated database; the app at the simulator and the broker; ``callers``.
    Caller 0 has a per-caller rate far above anything measured (an operator's override for
    a big service: the limiter still runs on every request); the others get the default."""
    run = secrets.token_hex(4)
    name = f"bench_{run}"
    asyncio.run(_admin(urls.database_url, f"CREATE DATABASE {name}"))
    database_url = _with_db(urls.database_url, name)
    client_id, client_secret = f"bench-{run}", secrets.token_urlsafe(24)
    redirect = "http://127.0.0.1:9/oauth/callback"  # installs here never use the browser flow
    sim.add_app(client_id, [client_secret], [redirect], scopes=list(SCOPES))
    deployment = Deployment(
        admin_url=urls.database_url,
        database_url=database_url,
        env={
            "BROKER_DATABASE_URL": database_url,
            "BROKER_REDIS_URL": urls.redis_url,
            "BROKER_REDIS_PREFIX": f"bench{run}:",
            "BROKER_VAULT_ADDR": urls.vault_addr,
            "BROKER_VAULT_TOKEN": urls.vault_token,
            "BROKER_VAULT_KV_PREFIX": f"bench{run}",
            "BROKER_HUBSPOT_API_URL": sim_url,
            "BROKER_HUBSPOT_APP_URL": sim_url,
            "BROKER_DEFAULT_APP": APP,
            "BROKER_REFRESHER_ENABLED": "false",
            "BROKER_DRAIN_SECONDS": "0",  # a stopped server exits at once
            **env,
        },
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=redirect,
    )
    deployment.callers = asyncio.run(_register(deployment, callers))
    return deployment


async def _register(deployment: Deployment, callers: int) -> list[str]:
    settings = deployment.settings
    await run_migrations(settings)
    async with open_admin(settings) as ctx:
        await ctx.admin.add_app(
            App(APP, deployment.client_id, deployment.redirect_uri, scopes=SCOPES),
            Secret(deployment.client_secret),
            actor="bench",
        )
        keys = []
        for i in range(callers):
            new = await ctx.callers.create(
                f"bench-caller-{i}",
                roles=[Role.TOKENS_READ.value],
                apps=[APP],
                rate_limit=1e9 if i == 0 else None,
                actor="bench",
            )
            keys.append(new.secret)
    return keys


def drop(deployment: Deployment) -> None:
    name = urlsplit(deployment.database_url).path.lstrip("/")
    asyncio.run(_admin(deployment.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@dataclass(frozen=True)
class SeedTimes:
    portals: int
    mint_s: float
    encrypt_s: float
    copy_s: float

    @property
    def total_s(self) -> float:
        return self.mint_s + self.encrypt_s + self.copy_s


def _mint(sim: Simulator, d: Deployment, hub: int) -> tuple[str, str]:
    sim.add_portal(hub)
    code = sim.issue_code(d.client_id, d.redirect_uri, hub)
    reply = sim.handle_token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": d.client_id,
            "client_secret": d.client_secret,
            "redirect_uri": d.redirect_uri,
        }
    )
    if reply.status != 200 or reply.json is None:
        raise RuntimeError(f"the simulator refused to mint a grant for hub {hub}")
    return str(reply.json["refresh_token"]), str(reply.json["access_token"])


async def seed_portals(
    d: Deployment,
    sim: Simulator,
    hubs: list[int],
    *,
    lifetime: float,
    expired: bool = False,
    fingerprints: bool = True,
) -> SeedTimes:
    """Install ``hubs`` in bulk. Each row's access token expires ``lifetime`` seconds after
    seeding (already expired with ``expired``; never later than the simulator's expiry)."""
    settings = d.settings
    conn = await asyncpg.connect(d.database_url)
    vault = VaultAdapter(settings)
    try:
        await vault.login()
        issued_at = await conn.fetchval("SELECT clock_timestamp()")
        started = time.perf_counter()
        grants = [_mint(sim, d, hub) for hub in hubs]
        minted = time.perf_counter()
        gate = asyncio.Semaphore(4)

        async def encrypt(lo: int) -> list[str]:
            items = []
            for i in range(lo, min(lo + _BATCH, len(hubs))):
                key, (refresh, access) = PortalKey(APP, hubs[i]), grants[i]
                items += [(refresh, key.context("refresh")), (access, key.context("access"))]
            async with gate:
                return await vault.encrypt(items)

        chunks = await asyncio.gather(*(encrypt(lo) for lo in range(0, len(hubs), _BATCH)))
        cts = [ct for chunk in chunks for ct in chunk]
        prints: list[str | None] = [None] * len(hubs)
        if fingerprints:  # only fingerprints are made here: no schedule, no audit
            keyring = Keyring(
                macs=vault,
                schedule=cast(KeySchedule, None),
                key_prefix=settings.vault_signing_key_prefix,
                audit=cast(AuditSink, None),
            )
            prints = list(await asyncio.gather(*(keyring.fingerprint(g[1]) for g in grants)))
        encrypted = time.perf_counter()
        rows = []
        for i, hub in enumerate(hubs):
            if expired:
                expires_at = issued_at - timedelta(seconds=1)
                refresh_after = expires_at + timedelta(days=365)  # the refresher leaves it be
            else:
                expires_at, refresh_after = schedule(issued_at, int(lifetime))
            row = (APP, hub, f"hub-{hub}.example.com", "bench", list(SCOPES))
            rows.append((*row, cts[2 * i], cts[2 * i + 1], expires_at, refresh_after, prints[i]))
        await conn.copy_records_to_table(
            "portals",
            records=rows,
            columns=[
                "app",
                "hub_id",
                "hub_domain",
                "installed_by",
                "scopes",
                "refresh_ct",
                "access_ct",
                "access_expires_at",
                "refresh_after",
                "access_fp",
            ],
        )
        await conn.execute("ANALYZE portals")
        copied = time.perf_counter()
    finally:
        await vault.close()
        await conn.close()
    return SeedTimes(len(hubs), minted - started, encrypted - minted, copied - encrypted)
