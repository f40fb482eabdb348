"""How each server runs: its command line, readiness probe, stop signal and environment
(a :class:`Recipe` per server; the port is chosen per start attempt)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from broker.dev.stack._binaries import bao_binary, valkey_binary
from broker.dev.stack._common import HOST, SENTINEL_MASTER, OsUser, ServerName
from broker.dev.stack._launcher import Launcher
from broker.dev.stack._probes import (
    bao_healthy,
    postgres_answers,
    replica_in_sync,
    sentinel_sees_all,
    streams_synchronously,
    valkey_pongs,
)
from broker.dev.stack._processes import Recipe, clean_env
from broker.dev.stack._vault import bootstrap_vault

#: The sentinels of a ``redis_sentinel`` stack.
SENTINELS: tuple[ServerName, ...] = ("sentinel_1", "sentinel_2", "sentinel_3")
#: Waits until a condition holds (``what`` names it in the timeout error).
Wait = Callable[[str, Callable[[], bool]], None]
#: The port of a server already running (a standby's primary, a replica's master).
PortOf = Callable[[], int]


def postgres_recipe(
    name: ServerName,
    pgdata: Path,
    user: OsUser | None,
    *,
    bin_dir: Path,
    socket_dir: Path,
    fast: bool,
    synchronous: bool,
    primary_port: PortOf,
    wait: Wait,
) -> Recipe:
    """The primary, or (``name == "postgres_standby"``) a standby of the primary at
    ``primary_port``. ``synchronous``: the primary acknowledges a commit only once the
    standby has it."""
    settings = {
        "listen_addresses": HOST,
        "unix_socket_directories": str(socket_dir),
        "max_connections": "200",
    }
    if fast:
        # Not synchronous_commit=off: with fsync off it saves ~6% per commit, and it would
        # let a SIGKILLed postgres lose acknowledged commits, which fault tests must not see.
        settings |= {"fsync": "off", "full_page_writes": "off"}
    if synchronous:
        # A commit is acknowledged only once the standby has it: losing the primary loses
        # no acknowledged write (the token journal's guarantee). Not on the standby: once
        # promoted it has no standby of its own, and would wait for one forever.
        settings["synchronous_standby_names"] = "*"
    options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

    def argv(port: int) -> list[str]:
        return [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port), *options]

    def streaming(_: int) -> None:
        wait(
            "a synchronously streaming standby",
            lambda: streams_synchronously(bin_dir, primary_port()),
        )

    return Recipe(
        name=name,
        argv=argv,
        probe=lambda port: postgres_answers(bin_dir, port),
        stop_signal=signal.SIGINT,  # fast shutdown: roll back sessions, checkpoint, exit
        env=clean_env(),
        cwd=pgdata,
        run_as=user,
        after_ready=streaming if name == "postgres_standby" else None,
    )


def valkey_recipe(name: ServerName, workdir: Path, *, master_port: PortOf) -> Recipe:
    """The master, or (``name == "valkey_replica"``) a replica of the one at ``master_port``."""
    binary = valkey_binary()
    workdir.mkdir(mode=0o700, exist_ok=True)

    def argv(port: int) -> list[str]:
        flags = {
            "--port": str(port),
            "--bind": HOST,
            "--protected-mode": "yes",
            "--save": "",  # no RDB snapshots ...
            "--appendonly": "no",  # ... and no AOF: a throwaway cache
            "--dir": str(workdir),
            "--daemonize": "no",
            "--logfile": "",  # stdout, i.e. our log file
        }
        if name == "valkey_replica":
            flags["--replicaof"] = f"{HOST} {master_port()}"
        return [str(binary), *(arg for pair in flags.items() for arg in pair)]

    return Recipe(
        name=name,
        argv=argv,
        probe=replica_in_sync if name == "valkey_replica" else valkey_pongs,
        stop_signal=signal.SIGTERM,
        env=clean_env(),
        cwd=workdir,
    )


def sentinel_recipe(
    name: ServerName, workdir: Path, *, master_port: PortOf, sentinels: int
) -> Recipe:
    """One of ``sentinels`` sentinels watching the master at ``master_port`` (quorum 2)."""
    binary = valkey_binary()

    def argv(port: int) -> list[str]:
        # A sentinel rewrites its configuration file as it learns: one per start.
        conf = workdir / f"{name}.conf"
        conf.write_text(
            f"port {port}\nbind {HOST}\ndir {workdir}\n"
            f"sentinel monitor {SENTINEL_MASTER} {HOST} {master_port()} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
        )
        return [str(binary), str(conf), "--sentinel"]

    return Recipe(
        name=name,
        argv=argv,
        probe=lambda port: sentinel_sees_all(port, sentinels=sentinels, master=SENTINEL_MASTER),
        stop_signal=signal.SIGTERM,
        env=clean_env(),
        cwd=workdir,
    )


def openbao_recipe(home: Path, token: str) -> Recipe:
    """A dev-mode OpenBao whose root token is ``token``, bootstrapped once it answers."""
    binary = bao_binary()

    def argv(port: int) -> list[str]:
        listen = f"-dev-listen-address={HOST}:{port}"
        return [str(binary), "server", "-dev", "-dev-no-store-token", listen]

    def bootstrap(port: int) -> None:
        bootstrap_vault(f"http://{HOST}:{port}", token)

    return Recipe(
        name="openbao",
        argv=argv,
        probe=bao_healthy,
        stop_signal=signal.SIGTERM,
        # The token goes through the environment: argv is world-readable in /proc.
        env=clean_env(HOME=str(home), BAO_DEV_ROOT_TOKEN_ID=token),
        cwd=home,
        port_pair=True,
        after_ready=bootstrap,
    )


def initdb(launcher: Launcher, recipe: Recipe, *, bin_dir: Path, fast: bool) -> None:
    """Create the primary's cluster unless its data directory already holds one."""
    pgdata = recipe.cwd
    if (pgdata / "PG_VERSION").exists():
        return
    argv = [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres"]
    argv += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"]
    if fast:
        argv.append("--no-sync")
    launcher.run_once("initdb", argv, recipe)


def basebackup(launcher: Launcher, recipe: Recipe, *, bin_dir: Path, primary_port: int) -> None:
    """The standby's data directory: a copy of the running primary, set to follow it."""
    if (recipe.cwd / "standby.signal").exists():
        return  # a standby kept in data_dir from an earlier run: it catches up
    if (recipe.cwd / "PG_VERSION").exists():  # promoted in an earlier run: copy afresh
        shutil.rmtree(recipe.cwd)
        recipe.cwd.mkdir(mode=0o700)
        if recipe.run_as is not None:
            os.chown(recipe.cwd, recipe.run_as.uid, recipe.run_as.gid)
    argv = [str(bin_dir / "pg_basebackup"), "-h", HOST, "-p", str(primary_port)]
    argv += ["-U", "postgres", "-D", str(recipe.cwd), "-X", "stream", "-R", "-c", "fast"]
    launcher.run_once("pg_basebackup", [*argv, "--no-sync"], recipe)


def database_url(ports: Mapping[ServerName, int]) -> str:
    """The primary, or primary and standby with ``target_session_attrs=read-write``."""
    if "postgres_standby" not in ports:
        return f"postgresql://postgres@{HOST}:{ports['postgres']}/postgres"
    hosts = f"{HOST}:{ports['postgres']},{HOST}:{ports['postgres_standby']}"
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"


def redis_url(ports: Mapping[ServerName, int]) -> str:
    """The master, or a ``redis+sentinel://`` URL naming every sentinel."""
    if "sentinel_1" not in ports:
        return f"redis://{HOST}:{ports['valkey']}/0"
    sentinels = ",".join(f"{HOST}:{ports[name]}" for name in SENTINELS)
    return f"redis+sentinel://{sentinels}/{SENTINEL_MASTER}/0"
