"""The stack itself: three (or, for failover tests, more) servers as child processes."""

from __future__ import annotations

import atexit
import enum
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal

import hvac
import structlog

from broker.dev.stack._binaries import (
    check_traversable,
    postgres_bin_dir,
    postgres_os_user,
    reachable_install,
)
from broker.dev.stack._common import (
    HOST,
    BackendUrls,
    OsUser,
    ServerName,
    ServerProcess,
    StackError,
    StackStartError,
)
from broker.dev.stack._launcher import Launcher
from broker.dev.stack._probes import psql
from broker.dev.stack._processes import (
    POLL_SECONDS,
    UNSEAL_KEY_VALUE,
    Recipe,
    ServerFailed,
    send_signal,
    terminate,
)
from broker.dev.stack._recipes import (
    SENTINELS,
    basebackup,
    database_url,
    initdb,
    openbao_recipe,
    postgres_recipe,
    redis_url,
    sentinel_recipe,
    valkey_recipe,
)

_log = structlog.get_logger(__name__)
#: Started first; the others follow them.
_LEADERS: tuple[ServerName, ...] = ("postgres", "valkey", "openbao")


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


class EmbeddedStack:
    """PostgreSQL, Valkey and OpenBao as child processes on loopback; see the module contract.

    *data_dir* keeps PostgreSQL's data and the logs across runs (Valkey and OpenBao dev mode
    keep nothing); by default everything lives in a temporary directory removed on stop.
    *fast* turns off PostgreSQL's fsync and full-page writes: commits still survive a crash
    or SIGKILL of PostgreSQL itself, but not a crash of the machine. Right for tests.

    Failover topologies, for the fault tests (``make run`` stays single-node):

    * *postgres_standby*: a streaming standby (``pg_basebackup``) that confirms every commit
      before the primary acknowledges it (``synchronous_standby_names = '*'``), so an
      acknowledged write survives losing the primary; ``urls.database_url`` names both
      (``target_session_attrs=read-write``). :meth:`promote_standby` does what Patroni or a
      managed service does after the primary is lost.
    * *redis_sentinel*: a Valkey replica and three sentinels watching the master as
      ``broker`` (quorum 2, down after 1 s); ``urls.redis_url`` is a ``redis+sentinel://``
      URL. Killing or freezing the master makes the sentinels promote the replica.

    :meth:`start` returns once the standby streams synchronously and every sentinel knows
    the replica and the other sentinels: a failover can happen from then on.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        fast: bool = True,
        start_timeout: float = 30.0,
        postgres_standby: bool = False,
        redis_sentinel: bool = False,
    ) -> None:
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._fast = fast
        self._postgres_standby = postgres_standby
        self._redis_sentinel = redis_sentinel
        self._promoted = False
        self._start_timeout = start_timeout
        self._state = _State.NEW
        self._lock = threading.Lock()
        self._restart_lock = threading.Lock()
        self._closing = threading.Event()
        self._procs: dict[ServerName, subprocess.Popen[bytes]] = {}
        self._servers: dict[ServerName, ServerProcess] = {}
        self._recipes: dict[ServerName, Recipe] = {}
        self._launcher: Launcher | None = None
        self._root: Path | None = None
        self._socket_dir: Path | None = None
        self._pg_bin: Path | None = None
        self._token = ""
        self._urls: BackendUrls | None = None

    # -- public ----------------------------------------------------------------------------

    @property
    def urls(self) -> BackendUrls:
        """The servers' addresses; only while the stack runs."""
        if self._urls is None or self._state is not _State.RUNNING:
            raise StackError("the stack is not running")
        return self._urls

    @property
    def processes(self) -> Mapping[ServerName, ServerProcess]:
        """A snapshot of the running servers (pids change on :meth:`restart`)."""
        with self._lock:
            return MappingProxyType(dict(self._servers))

    def pids(self) -> dict[ServerName, int]:
        """Each server's leader pid, which is also its process group id."""
        return {name: server.pid for name, server in self.processes.items()}

    def start(self) -> EmbeddedStack:
        """Start all three servers; see the module contract. A stack starts at most once."""
        with self._lock:
            if self._state is not _State.NEW:
                raise StackError(f"a stack starts once (this one is {self._state.value})")
            self._state = _State.STARTING
        began = time.monotonic()
        atexit.register(self.stop)
        try:
            self._prepare()
            # Followers (standby, replica, sentinels) need their leaders' ports.
            leaders = [n for n in self._recipes if n in _LEADERS]
            failures = self._start_all(leaders)
            followers = [n for n in self._recipes if n not in _LEADERS]
            if followers and not failures:
                failures = self._start_all(followers)
        except BaseException:
            self.stop()
            raise
        if failures:
            self.stop()
            raise StackStartError(failures)
        ports = {name: server.port for name, server in self.processes.items()}
        self._urls = BackendUrls(
            database_url=database_url(ports),
            redis_url=redis_url(ports),
            vault_addr=f"http://{HOST}:{ports['openbao']}",
            vault_token=self._token,
        )
        with self._lock:
            if self._state is not _State.STARTING:
                raise StackError("the stack was stopped while it was starting")
            self._state = _State.RUNNING
        _log.debug("dev_stack.started", seconds=round(time.monotonic() - began, 3), **ports)
        return self

    def stop(self) -> None:
        """Stop every server and remove temporary directories; idempotent and thread-safe."""
        with self._lock:
            if self._state is _State.STOPPED:
                return
            self._state = _State.STOPPED
            self._closing.set()
            procs = [(n, p, self._stop_signal(n)) for n, p in self._procs.items()]
            self._servers.clear()
        atexit.unregister(self.stop)
        terminate(procs)
        if self._launcher is not None:
            self._launcher.close()
        for path in (self._socket_dir, self._root if self._data_dir is None else None):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        _log.debug("dev_stack.stopped")

    def restart(self, name: Literal["postgres", "valkey"]) -> ServerProcess:
        """Stop one server (even if SIGSTOPped or SIGKILLed) and start it on the same port.

        PostgreSQL keeps its data (after crash recovery if it was killed); Valkey comes back
        empty. OpenBao is not restartable: dev mode keeps everything in memory, so a new one
        would have lost every Transit key. Raises :class:`StackStartError` if it won't start.
        """
        if name not in ("postgres", "valkey"):
            raise ValueError(f"only postgres and valkey can be restarted, not {name!r}")
        if name == "postgres" and self._promoted:
            # It would come back as a second primary, first in the DSN, waiting forever
            # for a synchronous standby it no longer has.
            raise StackError("the old primary cannot come back once the standby is promoted")
        with self._restart_lock:
            with self._lock:
                if self._state is not _State.RUNNING:
                    raise StackError("the stack is not running")
                proc, port = self._procs[name], self._servers[name].port
                del self._servers[name]
            terminate([(name, proc, self._stop_signal(name))])
            try:
                server = self._started().launch(self._recipes[name], port=port)
            except ServerFailed as exc:
                raise StackStartError({name: str(exc)}) from None
            with self._lock:
                self._servers[name] = server
            return server

    def kill(self, name: ServerName) -> None:
        """SIGKILL one server and its process group (a crash, a lost machine); it stays dead
        unless :meth:`restart` can bring it back."""
        with self._lock:
            proc = self._procs[name]
            self._servers.pop(name, None)
        terminate([(name, proc, signal.SIGKILL)])

    def freeze(self, name: ServerName) -> None:
        """SIGSTOP one server's process group: connections are accepted, nothing answers."""
        send_signal(self.processes[name].pid, signal.SIGSTOP, group=True)

    def thaw(self, name: ServerName) -> None:
        send_signal(self.processes[name].pid, signal.SIGCONT, group=True)

    def seal_vault(self) -> None:
        """Seal OpenBao (as an operator or an outage would); :meth:`unseal_vault` undoes it.
        Dev mode keeps its data in memory, so nothing is lost in between."""
        client = hvac.Client(url=self.urls.vault_addr, token=self._token, timeout=10)
        try:
            client.sys.seal()  # type: ignore[no-untyped-call]  # untyped in types-hvac
        finally:
            client.adapter.close()

    def unseal_vault(self) -> None:
        """Unseal OpenBao with the dev server's unseal key (from its own log, never ours)."""
        found = UNSEAL_KEY_VALUE.search(self.processes["openbao"].log_path.read_text())
        if found is None:
            raise StackError("no unseal key in OpenBao's log")
        client = hvac.Client(url=self.urls.vault_addr, timeout=10)
        try:
            client.sys.submit_unseal_key(found.group(1))
        finally:
            client.adapter.close()

    def promote_standby(self) -> None:
        """Make the standby the primary (``pg_promote``), as a failover manager would once
        the primary is lost; returns when it accepts writes."""
        assert self._pg_bin is not None  # set by _prepare
        port = self.processes["postgres_standby"].port
        if psql(self._pg_bin, port, "select pg_promote(true, 60)") != "t":
            raise StackError("the standby did not promote within 60 s")
        self._promoted = True

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedStack {self._state.value} {self.pids()}>"

    # -- start-up --------------------------------------------------------------------------

    def _stop_signal(self, name: ServerName) -> signal.Signals:
        recipe = self._recipes.get(name)
        return recipe.stop_signal if recipe is not None else signal.SIGTERM

    def _prepare(self) -> None:
        """Directories, the OS user and the recipes; nothing runs yet."""
        pg_user = postgres_os_user()
        self._pg_bin = postgres_bin_dir()
        if pg_user is not None:
            self._pg_bin = reachable_install(self._pg_bin.parent, pg_user) / "bin"
        if self._data_dir is None:
            self._root = Path(tempfile.mkdtemp(prefix="embedded-stack-"))
        else:
            self._root = self._data_dir.resolve()
            self._root.mkdir(parents=True, exist_ok=True)
        if pg_user is not None:
            check_traversable(self._root, pg_user)
            self._root.chmod(self._root.stat().st_mode | stat.S_IXOTH)  # traverse, not list
        for sub in ("logs", "valkey", "openbao"):
            (self._root / sub).mkdir(mode=0o700, exist_ok=True)
        pgdata = self._root / "postgres"
        pgdata.mkdir(mode=0o700, exist_ok=True)
        # Unix socket paths are limited to ~107 bytes, so never under a long data_dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="embedded-pg-"))
        if pg_user is not None:
            for path in (pgdata, self._socket_dir):
                os.chown(path, pg_user.uid, pg_user.gid)
        self._token = secrets.token_urlsafe(24)
        self._launcher = Launcher(
            self._root,
            start_timeout=self._start_timeout,
            redact=(self._token,),
            lock=self._lock,
            closing=self._closing,
            procs=self._procs,
        )

        def master() -> int:  # read when a follower starts, once the master runs
            return self.processes["valkey"].port

        self._recipes = {
            "postgres": self._postgres_recipe("postgres", pgdata, pg_user),
            "valkey": valkey_recipe("valkey", self._root / "valkey", master_port=master),
            "openbao": openbao_recipe(self._root / "openbao", self._token),
        }
        if self._postgres_standby:
            standby = self._root / "postgres-standby"
            standby.mkdir(mode=0o700, exist_ok=True)
            if pg_user is not None:
                os.chown(standby, pg_user.uid, pg_user.gid)
            self._recipes["postgres_standby"] = self._postgres_recipe(
                "postgres_standby", standby, pg_user
            )
        if self._redis_sentinel:
            replica = self._root / "valkey-replica"
            self._recipes["valkey_replica"] = valkey_recipe(
                "valkey_replica", replica, master_port=master
            )
            for name in SENTINELS:
                self._recipes[name] = sentinel_recipe(
                    name, self._root / "valkey", master_port=master, sentinels=len(SENTINELS)
                )

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not ready():
            if self._closing.is_set():
                raise ServerFailed("the stack is stopping")
            if time.monotonic() > deadline:
                raise ServerFailed(f"no {what} within {self._start_timeout:g}s")
            time.sleep(POLL_SECONDS * 5)

    def _postgres_recipe(self, name: ServerName, pgdata: Path, user: OsUser | None) -> Recipe:
        assert self._pg_bin is not None  # set by _prepare
        assert self._socket_dir is not None
        return postgres_recipe(
            name,
            pgdata,
            user,
            bin_dir=self._pg_bin,
            socket_dir=self._socket_dir,
            fast=self._fast,
            synchronous=name == "postgres" and self._postgres_standby,
            primary_port=lambda: self.processes["postgres"].port,
            wait=self._wait,
        )

    def _started(self) -> Launcher:
        assert self._launcher is not None  # set by _prepare
        return self._launcher

    def _start_all(self, names: list[ServerName]) -> dict[ServerName, str]:
        """Start ``names`` concurrently; returns the failures (empty on success)."""
        started, failures = self._started().start_all({name: self._starter(name) for name in names})
        with self._lock:
            self._servers.update(started)
        return failures

    def _starter(self, name: ServerName) -> Callable[[], ServerProcess]:
        launcher, recipe, bin_dir = self._started(), self._recipes[name], self._pg_bin
        assert bin_dir is not None  # set by _prepare

        def start() -> ServerProcess:
            if name == "postgres":
                initdb(launcher, recipe, bin_dir=bin_dir, fast=self._fast)
            elif name == "postgres_standby":
                primary = self.processes["postgres"].port
                basebackup(launcher, recipe, bin_dir=bin_dir, primary_port=primary)
            return launcher.launch(recipe, port=None)

        return start
