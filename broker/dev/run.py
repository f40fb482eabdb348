"""``broker dev`` (what ``make run`` calls): the whole system on this machine, no Docker and
no internet — embedded PostgreSQL, Valkey and OpenBao, the HubSpot simulator, and the broker
on 127.0.0.1 — seeded with a demo app, a demo portal at the simulator and a demo caller.
Ctrl-C stops everything; the embedded servers die with this process even on a SIGKILL."""

from __future__ import annotations

import asyncio
import secrets
import shlex
import sys

from broker import logs, server
from broker.app import open_admin, run_migrations
from broker.config import Secret, Settings
from broker.core.models import App, Role
from broker.dev.simulator import Simulator, run_in_thread
from broker.dev.stack import EmbeddedStack

DEMO_APP = "demo"
DEMO_HUB = 12345678
DEMO_SCOPES = ("crm.objects.contacts.read", "oauth")


async def _seed(
    settings: Settings, client_id: str, client_secret: str, redirect: str
) -> tuple[str, str]:
    """Returns the demo caller's key and a signed install link for the demo app."""
    await run_migrations(settings)
    async with open_admin(settings) as ctx:
        await ctx.admin.add_app(
            App(DEMO_APP, client_id, redirect, scopes=DEMO_SCOPES),
            Secret(client_secret),
            actor="dev",
        )
        caller = await ctx.callers.create(
            f"demo-service-{secrets.token_hex(2)}",
            roles=[Role.TOKENS_READ.value, Role.PORTALS_ADMIN.value],
            actor="dev",
        )
        await ctx.callers.set_gateway(caller.caller.name, hubspot_paths=["/crm/"], actor="dev")
        link = await ctx.install_links.mint(DEMO_APP, actor="dev")
    return caller.secret, link.url


def _steps(broker_url: str, public_url: str, sim_url: str, key: str, install_url: str) -> str:
    auth = shlex.quote(f"Authorization: Bearer {key}")
    token_url = f"{broker_url}/v1/portals/{DEMO_HUB}/token"
    extract = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    return f"""
hubspot-token-broker is running: the internal API on {broker_url}, the install flow on
{public_url} (what an ingress would expose), the HubSpot simulator on {sim_url}.

1. Install the demo portal {DEMO_HUB} (the simulator consents at once) with this operator-
   signed install link (valid 7 days; `broker apps install-link demo` mints more).
   Open it in a browser:
     {install_url}
   or with curl (the cookie jar keeps the flow bound to one "browser"):
     curl -sSL -c cookies.txt -b cookies.txt {shlex.quote(install_url)}

2. Fetch the portal's access token as the demo service:
     curl -s -H {auth} {token_url}

3. Use the token at the simulator's HubSpot API:
     TOKEN=$(curl -s -H {auth} {token_url} | {extract})
     curl -s -H "Authorization: Bearer $TOKEN" {sim_url}/crm/v3/objects/contacts

4. Or let the broker call HubSpot for the service (the token never leaves the broker; the
   demo service may use paths under /crm/, within the portal's shared rate budget):
     curl -s -H {auth} {broker_url}/v1/portals/{DEMO_HUB}/hubspot/crm/v3/objects/contacts

Also: {broker_url}/readyz  {broker_url}/metrics   Ctrl-C stops everything.
"""


def run_dev(
    *,
    port: int = 8080,
    public_port: int = 8081,
    simulator_port: int = 8090,
    host: str = "127.0.0.1",
) -> int:
    broker_url = f"http://{host}:{port}"
    public_url = f"http://{host}:{public_port}"
    client_id = f"demo-{secrets.token_hex(4)}"
    client_secret = secrets.token_urlsafe(24)
    redirect = f"{public_url}/oauth/callback"  # HubSpot sends browsers to the public listener
    sim = Simulator()
    sim.add_app(client_id, [client_secret], [redirect], scopes=list(DEMO_SCOPES))
    sim.add_portal(DEMO_HUB, "demo-portal.example.com")
    sim.configure(consent="auto", consent_hub_id=DEMO_HUB)
    print("starting embedded PostgreSQL, Valkey and OpenBao ...", file=sys.stderr)
    with EmbeddedStack() as stack, run_in_thread(sim, host, simulator_port) as sim_url:
        urls = stack.urls
        settings = Settings(
            database_url=Secret(urls.database_url),
            redis_url=Secret(urls.redis_url),
            vault_addr=urls.vault_addr,
            vault_token=Secret(urls.vault_token),
            hubspot_api_url=sim_url,
            hubspot_app_url=sim_url,
            host=host,
            port=port,
            public_host=host,
            public_port=public_port,
            default_app=DEMO_APP,
            log_format="console",
            drain_seconds=0,  # Ctrl-C at a terminal: no load balancer to wait for
        )
        logs.configure(settings.log_level, settings.log_format)
        key, install_url = asyncio.run(_seed(settings, client_id, client_secret, redirect))
        print(_steps(broker_url, public_url, sim_url, key, install_url), flush=True)
        server.run(settings)
    return 0
