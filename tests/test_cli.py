"""The ``broker`` command line, run as a real subprocess against the real backends.

The operator commands run in both modes (the ``cli`` fixture): *local*, with the database and
Vault settings, and *remote*, against a broker served by the test with only ``BROKER_URL``
and a caller key in the process's environment (no database, Redis or Vault setting at all):
the same commands, the same output, the same failures."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from broker.adapters.postgres.migrate import available
from broker.app import create_app, open_admin
from broker.config import Settings, load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from broker.dev.stack import BackendUrls
from tests.helpers import (
    CLI_ADMIN,
    Deployment,
    admin_key,
    admin_sql,
    database_named,
    register,
    run_broker,
    serve_app,
)
from tests.workload_issuer import AUDIENCE, ISSUER, Issuer


@dataclass
class Cli:
    """``broker`` in one mode: called with the command's arguments."""

    mode: str
    env: dict[str, str]
    settings: Settings
    url: str
    sim: Simulator

    def __call__(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_broker(self.env, *args, stdin=stdin)


@pytest.fixture(params=["local", "remote"])
def cli(request: pytest.FixtureRequest, env: dict[str, str], sim: Simulator) -> Iterator[Cli]:
    settings = load_settings(env)
    with serve_app(create_app(settings)) as url:
        if request.param == "local":
            yield Cli("local", env, settings, url, sim)
        else:
            # Nothing else: no database, Redis or Vault setting reaches the process.
            remote = {"BROKER_URL": url, "BROKER_CALLER_KEY": admin_key(settings)}
            yield Cli("remote", remote, settings, url, sim)


def test_check_config_reports_every_problem_at_once() -> None:
    result = run_broker({"BROKER_PORT": "eighty", "BROKER_VAULT_AUTH": "magic"}, "check-config")
    assert result.returncode == 2
    for key in (
        "BROKER_DATABASE_URL",
        "BROKER_REDIS_URL",
        "BROKER_VAULT_ADDR",
        "BROKER_PORT",
        "BROKER_VAULT_AUTH",
    ):
        assert key in result.stderr


def test_check_config_cross_field_problems(env: dict[str, str]) -> None:
    bad = {
        **env,
        "BROKER_VAULT_ADDR": "ftp://vault",
        "BROKER_LEASE_SECONDS": "3",
        "BROKER_VAULT_TOKEN": "",
    }
    result = run_broker(bad, "check-config", "--offline")
    assert result.returncode == 2
    assert "BROKER_VAULT_ADDR" in result.stderr
    assert "BROKER_LEASE_SECONDS" in result.stderr
    assert "BROKER_VAULT_TOKEN" in result.stderr


def test_check_config_reaches_backends(env: dict[str, str]) -> None:
    good = run_broker(env, "--json", "check-config")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {
        "settings": "ok",
        "postgres": "ok",
        "redis": "ok",
        "vault": "ok",
    }
    down = run_broker(
        {**env, "BROKER_REDIS_URL": "redis://127.0.0.1:9/0"}, "--json", "check-config"
    )
    assert down.returncode == 1
    assert json.loads(down.stdout)["redis"] == "redis_unavailable"
    assert env["BROKER_VAULT_TOKEN"] not in good.stdout + good.stderr + down.stdout


def test_apps_callers_portals(cli: Cli) -> None:
    secret = f"cs-{secrets.token_hex(12)}"
    added = cli(
        "apps",
        "add",
        "crm-sync",
        "--client-id",
        "cid-1",
        "--redirect-uri",
        "https://broker.example/oauth/callback",
        "--scope",
        "crm.objects.contacts.read",
        stdin=secret + "\n",
    )
    assert added.returncode == 0, added.stderr
    listed = cli("--json", "apps", "list")
    assert [a["slug"] for a in json.loads(listed.stdout)] == ["crm-sync"]
    assert secret not in added.stdout + listed.stdout

    bad = cli("apps", "add", "Bad Slug", "--client-id", "x", "--redirect-uri", "nope", stdin="s\n")
    assert bad.returncode == 1
    assert "invalid_request" in bad.stderr

    created = cli("--json", "callers", "create", "billing", "--app", "crm-sync", "--hub", "42")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    assert key.startswith("hsb_")
    again = cli("callers", "create", "billing")
    assert again.returncode == 1
    assert "caller_exists" in again.stderr
    callers = [
        c for c in json.loads(cli("--json", "callers", "list").stdout) if c["name"] != CLI_ADMIN
    ]
    assert callers == [
        {
            "name": "billing",
            "roles": "tokens:read",
            "apps": "crm-sync",
            "hubs": "42",
            "expires_at": None,
            "disabled": False,
        }
    ]
    assert key not in json.dumps(callers)
    assert cli("callers", "disable", "billing").returncode == 0
    assert cli("callers", "disable", "billing").returncode == 1

    assert json.loads(cli("--json", "portals", "list").stdout) == []
    missing = cli("portals", "show", "42", "--app", "crm-sync")
    assert missing.returncode == 1
    assert "portal_not_found" in missing.stderr


def test_bad_arguments_exit_2() -> None:
    assert run_broker({}, "portals", "show", "not-a-number").returncode == 2
    assert run_broker({}, "frobnicate").returncode == 2


def test_concurrent_migrations_apply_once(backends: BackendUrls, env: dict[str, str]) -> None:
    name = f"m_{secrets.token_hex(5)}"
    asyncio.run(admin_sql(backends.database_url, f"CREATE DATABASE {name}"))
    fresh = {**env, "BROKER_DATABASE_URL": database_named(backends.database_url, name)}
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: run_broker(fresh, "--json", "migrate"), range(4)))
        assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
        applied = [json.loads(r.stdout)["applied"] for r in results]
        every = [m.version for m in available()]
        assert sorted(map(len, applied)) == [0, 0, 0, len(every)]  # one replica applied all

        async def versions() -> list[int]:
            conn = await asyncpg.connect(fresh["BROKER_DATABASE_URL"])
            try:
                return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
            finally:
                await conn.close()

        assert asyncio.run(versions()) == every
        assert run_broker(fresh, "check-config").returncode == 0
    finally:
        asyncio.run(
            admin_sql(backends.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        )


HUB = 9_100_001


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_portals_links_audit_keys_retention(cli: Cli) -> None:
    """Every operator command but those local by nature, in this mode, on a real portal."""
    client_id, secret, _ = register(cli.settings, cli.sim, f"{cli.url}/oauth/callback", slug="demo")
    link = _json(cli("--json", "apps", "install-link", "demo", "--ttl", "600"))
    d = Deployment(cli.settings, cli.sim, "", cli.url, "demo", client_id, secret, "")
    cli.sim.add_portal(HUB)
    assert d.install(HUB, link=link["url"]).status_code == 200

    [portal] = _json(cli("--json", "portals", "list", "--app", "demo"))
    assert (portal["hub_id"], portal["state"]) == (HUB, "active")
    shown = cli("portals", "show", str(HUB))  # the broker's default app
    assert shown.returncode == 0, shown.stderr
    assert "active" in shown.stdout
    held = cli("portals", "quarantine", str(HUB), "--app", "demo", "--reason", "drill")
    assert held.returncode == 0, held.stderr
    assert held.stdout.strip() == f"portal demo/{HUB} quarantined"
    assert _json(cli("--json", "portals", "release", str(HUB)))["state"] == "active"
    refreshed = _json(cli("--json", "portals", "refresh", str(HUB)))
    assert refreshed["version"] > portal["version"]
    again = cli("portals", "install-link", str(HUB), "--ttl", "300")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("http")
    assert "install-links revoke il_" in again.stderr

    links = _json(cli("--json", "install-links", "list", "--app", "demo"))
    assert {x["id"] for x in links} >= {link["id"]}
    assert all("link=" not in json.dumps(x) for x in links)  # never the token
    [revoked] = _json(cli("--json", "install-links", "revoke", link["id"]))
    assert revoked["revoked_at"] is not None
    unknown = cli("install-links", "revoke", "il_nope")
    assert unknown.returncode == 1
    assert "error (install_link_not_found):" in unknown.stderr

    gone = _json(cli("--json", "portals", "revoke", str(HUB), "--reason", "offboarded"))
    assert (gone["state"], gone["upstream"]) == ("revoked", "revoked")

    # The audit trail, in pages that neither repeat nor skip an event.
    actor = CLI_ADMIN if cli.mode == "remote" else "cli:"
    deadline = time.monotonic() + 10  # the audit trail is written every 0.5 s
    while True:
        trail = _json(cli("--json", "audit", "--hub", str(HUB), "--limit", "1000"))
        revokes = [e for e in trail if e["action"] == "portal.revoked"]
        if revokes or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(revokes) == 1
    assert revokes[0]["actor"].startswith(actor)
    assert revokes[0]["detail"]["reason"] == "offboarded"
    first = cli("--json", "audit", "--hub", str(HUB), "--limit", "2")
    cursor = first.stderr.split("--cursor ")[1].split()[0]
    rest = _json(cli("--json", "audit", "--hub", str(HUB), "--limit", "1000", "--cursor", cursor))
    assert [e["id"] for e in _json(first) + rest] == [e["id"] for e in trail]
    assert cli("audit", "--since", "yesterday").returncode == 2

    # Keys and retention.
    status = _json(cli("--json", "keys", "status"))
    assert status["latest_version"] >= 1
    rewrapped = _json(cli("--json", "keys", "rewrap"))
    assert (rewrapped["remaining"], rewrapped["failed"]) == (0, 0)
    before = {k["purpose"]: k for k in _json(cli("--json", "keys", "signing-status"))}
    rotated = cli("--json", "keys", "rotate-signing", "install-link", "--overlap-hours", "1")
    after = {k["purpose"]: k for k in _json(rotated)}
    assert after["install-link"]["latest_version"] == before["install-link"]["latest_version"] + 1
    assert after["install-link"]["retiring"]  # the old versions verify for the overlap
    swept = _json(cli("--json", "retention", "sweep"))
    assert swept["swept"] is True
    assert "audit_events" in swept["deleted"]

    # Webhooks are off here: the events are listed, nothing can be redelivered.
    events = _json(cli("--json", "webhooks", "events", "--hub", str(HUB)))
    assert {"portal.installed", "portal.revoked"} <= {e["type"] for e in events}
    off = cli("webhooks", "redeliver", str(events[0]["id"]))
    assert off.returncode == 1
    assert "error (webhooks_disabled):" in off.stderr

    # A retired app mints no link and installs nothing new; back in service, it does.
    assert _json(cli("--json", "apps", "retire", "demo"))["retired_at"] is not None
    refused = cli("apps", "install-link", "demo")
    assert refused.returncode == 1
    assert "error (app_retired):" in refused.stderr
    assert _json(cli("--json", "apps", "unretire", "demo"))["retired_at"] is None
    kept = cli(
        "apps",
        "add",
        "demo",
        "--client-id",
        client_id,
        "--redirect-uri",
        f"{cli.url}/oauth/callback",
        "--scope",
        "oauth",
        "--keep-secret",
    )
    assert kept.returncode == 0, kept.stderr
    assert "client secret kept" in kept.stdout
    assert cli("apps", "install-link", "demo").returncode == 0


@pytest.mark.parametrize("cli", ["remote"], indirect=True)
def test_remote_needs_a_credential_and_refuses_a_bad_one(cli: Cli) -> None:
    assert run_broker({"BROKER_URL": cli.url}, "callers", "list").returncode == 2
    wrong = run_broker(
        {"BROKER_URL": cli.url, "BROKER_CALLER_KEY": "hsb_" + "0" * 16 + "_" + "A" * 43},
        "callers",
        "list",
    )
    assert wrong.returncode == 1
    assert "error (unauthenticated):" in wrong.stderr
    down = run_broker({**cli.env, "BROKER_URL": "http://127.0.0.1:9"}, "apps", "list")
    assert down.returncode == 1
    assert "error (broker_unreachable):" in down.stderr


def test_every_operator_command_has_an_http_counterpart() -> None:
    """Each command but the local ones (serve, dev, migrate, check-config) runs remotely:
    it is a ``run`` command, which both implementations of the operations serve."""
    from broker.cli import build_parser
    from broker.cli._local import LocalOperations
    from broker.cli._ops import Operations
    from broker.cli._remote import RemoteOperations

    local_only = {"serve", "dev", "migrate", "check-config"}
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    seen = 0
    for name, sub in commands.choices.items():
        leaves = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        parsers = [*leaves[0].choices.values()] if leaves else [sub]
        for leaf in parsers:
            run = leaf.get_default("run")
            assert (run is None) == (name in local_only), (name, leaf.prog)
            seen += run is not None
    assert seen >= 25
    wanted = {m for m in vars(Operations) if not m.startswith("_")}
    for impl in (LocalOperations, RemoteOperations):
        assert wanted <= {m for m in vars(impl) if not m.startswith("_")}, impl


def test_remote_with_a_workload_jwt(
    env: dict[str, str],
    issuer: tuple[Issuer, str],
    tmp_path: Path,
) -> None:
    """A projected service-account token in a file (``--jwt-file``) instead of a key: the
    broker maps it to its caller, which the audit trail names."""
    state, jwks_url = issuer
    trusted = [{"issuer": ISSUER, "jwks_url": jwks_url, "audience": AUDIENCE}]
    settings = load_settings({**env, "BROKER_JWT_ISSUERS": json.dumps(trusted)})
    subject = "system:serviceaccount:platform:broker-ops"
    with serve_app(create_app(settings)) as url:

        async def workload() -> None:
            async with open_admin(settings) as svc:
                await svc.callers.create(
                    "platform-ops",
                    roles=[Role.CALLERS_ADMIN.value, Role.TOKENS_READ.value],
                    identity=(ISSUER, subject),
                    with_key=False,
                    actor="test",
                )

        asyncio.run(workload())
        token = tmp_path / "token"
        token.write_text(state.mint(sub=subject) + "\n")
        remote = {"BROKER_URL": url}
        created = _json(
            run_broker(remote, "--jwt-file", str(token), "--json", "callers", "create", "svc-a")
        )
        assert created["key"].startswith("hsb_")
        listed = _json(run_broker(remote, "--jwt-file", str(token), "--json", "callers", "list"))
        assert {c["name"] for c in listed} == {"platform-ops", "svc-a"}
        token.write_text(state.mint(sub="system:serviceaccount:other:app"))
        stranger = run_broker(remote, "--jwt-file", str(token), "callers", "list")
        assert stranger.returncode == 1
        assert "error (unauthenticated):" in stranger.stderr

    async def created_by() -> list[str]:
        async with open_admin(settings) as svc:
            events = await svc.admin.audit(action="caller.created")
            return [e.actor for e in events if e.detail["caller"] == "svc-a"]

    assert asyncio.run(created_by()) == ["platform-ops"]


def test_private_app_add_rotate_remove(cli: Cli, tmp_path: Path) -> None:
    """The token comes from stdin (or a file), never an argument, and is never printed."""
    hub = 7_700_101
    cli.sim.add_portal(hub)
    old = cli.sim.create_private_app_token(hub)
    added = cli("--json", "apps", "add-private", "priv", "--hub", str(hub), stdin=old + "\n")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["token_kind"] == "private_app"
    new = cli.sim.rotate_private_app_token(old, old_expires_in=3600)
    token_file = tmp_path / "token"
    token_file.write_text(new + "\n")
    rotated = cli(
        "apps",
        "rotate-private",
        "priv",
        "--hub",
        str(hub),
        "--old-expires-in",
        "3600",
        "--token-file",
        str(token_file),
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "new token served (old: 20" in rotated.stdout  # the old one's recorded end
    shown = cli("--json", "portals", "show", str(hub), "--app", "priv")
    assert json.loads(shown.stdout)["previous_expires_at"] is not None
    as_argument = cli("apps", "rotate-private", "priv", "--hub", str(hub), "--access-token", new)
    assert as_argument.returncode == 2  # there is no such argument
    as_file = cli("apps", "rotate-private", "priv", "--hub", str(hub), "--token-file", new)
    assert as_file.returncode == 2
    assert "No such file" in as_file.stderr
    removed = cli("apps", "remove-private", "priv", "--hub", str(hub))
    assert removed.returncode == 0, removed.stderr
    again = cli("apps", "rotate-private", "priv", "--hub", str(hub), stdin=new + "\n")
    assert again.returncode == 1
    assert "error (portal_not_found):" in again.stderr
    output = "".join(p.stdout + p.stderr for p in (added, rotated, shown, as_file, removed, again))
    assert old not in output
    assert new not in output
