"""The ``broker`` command line, run as a real subprocess against the real backends."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from broker.adapters.postgres.migrate import available
from broker.dev.stack import BackendUrls
from tests.conftest import _admin, _with_db


def broker(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
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


def test_check_config_reports_every_problem_at_once() -> None:
    result = broker({"BROKER_PORT": "eighty", "BROKER_VAULT_AUTH": "magic"}, "check-config")
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
    result = broker(bad, "check-config", "--offline")
    assert result.returncode == 2
    assert "BROKER_VAULT_ADDR" in result.stderr
    assert "BROKER_LEASE_SECONDS" in result.stderr
    assert "BROKER_VAULT_TOKEN" in result.stderr


def test_check_config_reaches_backends(env: dict[str, str]) -> None:
    good = broker(env, "--json", "check-config")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {
        "settings": "ok",
        "postgres": "ok",
        "redis": "ok",
        "vault": "ok",
    }
    down = broker({**env, "BROKER_REDIS_URL": "redis://127.0.0.1:9/0"}, "--json", "check-config")
    assert down.returncode == 1
    assert json.loads(down.stdout)["redis"] == "redis_unavailable"
    assert env["BROKER_VAULT_TOKEN"] not in good.stdout + good.stderr + down.stdout


def test_apps_callers_portals(env: dict[str, str]) -> None:
    secret = f"cs-{secrets.token_hex(12)}"
    added = broker(
        env,
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
    listed = broker(env, "--json", "apps", "list")
    assert [a["slug"] for a in json.loads(listed.stdout)] == ["crm-sync"]
    assert secret not in added.stdout + listed.stdout

    bad = broker(
        env, "apps", "add", "Bad Slug", "--client-id", "x", "--redirect-uri", "nope", stdin="s\n"
    )
    assert bad.returncode == 1
    assert "invalid_request" in bad.stderr

    created = broker(
        env, "--json", "callers", "create", "billing", "--app", "crm-sync", "--hub", "42"
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    assert key.startswith("hsb_")
    again = broker(env, "callers", "create", "billing")
    assert again.returncode == 1
    assert "caller_exists" in again.stderr
    callers = json.loads(broker(env, "--json", "callers", "list").stdout)
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
    assert broker(env, "callers", "disable", "billing").returncode == 0
    assert broker(env, "callers", "disable", "billing").returncode == 1

    assert json.loads(broker(env, "--json", "portals", "list").stdout) == []
    missing = broker(env, "portals", "show", "42", "--app", "crm-sync")
    assert missing.returncode == 1
    assert "portal_not_found" in missing.stderr


def test_bad_arguments_exit_2() -> None:
    assert broker({}, "portals", "show", "not-a-number").returncode == 2
    assert broker({}, "frobnicate").returncode == 2


def test_concurrent_migrations_apply_once(backends: BackendUrls, env: dict[str, str]) -> None:
    name = f"m_{secrets.token_hex(5)}"
    asyncio.run(_admin(backends.database_url, f"CREATE DATABASE {name}"))
    fresh = {**env, "BROKER_DATABASE_URL": _with_db(backends.database_url, name)}
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: broker(fresh, "--json", "migrate"), range(4)))
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
        assert broker(fresh, "check-config").returncode == 0
    finally:
        asyncio.run(_admin(backends.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
