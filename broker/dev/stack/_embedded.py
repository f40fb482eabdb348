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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

import hvac
import structlog

from broker.dev.stack._binaries import (
    bao_binary,
    check_traversable,
    postgres_bin_dir,
    postgres_os_user,
    reachable_install,
    valkey_binary,
)
from broker.dev.stack._common import (
    HOST,
    SENTINEL_MASTER,
    BackendUrls,
    OsUser,
    ServerName,
    ServerProcess,
    StackError,
    StackStartError,
)
from broker.dev.stack._probes import (
    bao_healthy,
    postgres_answers,
    psql,
    replica_in_sync,
    sentinel_sees_all,
    streams_synchronously,
    valkey_pongs,
)
from broker.dev.stack._processes import (
    BIND_CONFLICT,
    POLL_SECONDS,
    PORT_ATTEMPTS,
    UNSEAL_KEY_VALUE,
    Recipe,
    ServerFailed,
    Spawner,
    clean_env,
    die_with_parent,
    free_port,
    has_exited,
    send_signal,
    tail,
    terminate,
)
from broker.dev.stack._vault import bootstrap_vault

_log = structlog.get_logger(__name__)
#: Started first; the others follow them.
_LEADERS: tuple[ServerName, ...] = ("postgres", "valkey", "openbao")
_SENTINELS: tuple[ServerName, ...] = ("sentinel_1", "sentinel_2", "sentinel_3")


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
        self._spawner: Spawner | None = None
        self._preexec: Callable[[], None] | None = None
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
            database_url=self._database_url(ports),
            redis_url=self._redis_url(ports),
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
        if self._spawner is not None:
            self._spawner.close()
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
                server = self._launch(self._recipes[name], port=port)
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
        self._preexec = die_with_parent()
        self._spawner = Spawner()
        self._recipes = {
            "postgres": self._postgres_recipe("postgres", pgdata, pg_user),
            "valkey": self._valkey_recipe("valkey"),
            "openbao": self._openbao_recipe(),
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
            self._recipes["valkey_replica"] = self._valkey_recipe("valkey_replica")
            for name in _SENTINELS:
                self._recipes[name] = self._sentinel_recipe(name)

    def _database_url(self, ports: Mapping[ServerName, int]) -> str:
        if "postgres_standby" not in ports:
            return f"postgresql://postgres@{HOST}:{ports['postgres']}/postgres"
        hosts = f"{HOST}:{ports['postgres']},{HOST}:{ports['postgres_standby']}"
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def _redis_url(self, ports: Mapping[ServerName, int]) -> str:
        if not self._redis_sentinel:
            return f"redis://{HOST}:{ports['valkey']}/0"
        sentinels = ",".join(f"{HOST}:{ports[name]}" for name in _SENTINELS)
        return f"redis+sentinel://{sentinels}/{SENTINEL_MASTER}/0"

    def _postgres_recipe(self, name: ServerName, pgdata: Path, user: OsUser | None) -> Recipe:
        assert self._pg_bin is not None  # set by _prepare
        bin_dir = self._pg_bin
        settings = {
            "listen_addresses": HOST,
            "unix_socket_directories": str(self._socket_dir),
            "max_connections": "200",
        }
        if self._fast:
            # Not synchronous_commit=off: with fsync off it saves ~6% per commit, and it would
            # let a SIGKILLed postgres lose acknowledged commits, which fault tests must not see.
            settings |= {"fsync": "off", "full_page_writes": "off"}
        if name == "postgres" and self._postgres_standby:
            # A commit is acknowledged only once the standby has it: losing the primary loses
            # no acknowledged write (the token journal's guarantee). Not on the standby: once
            # promoted it has no standby of its own, and would wait for one forever.
            settings["synchronous_standby_names"] = "*"
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

        def argv(port: int) -> list[str]:
            return [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port), *options]

        def streaming(_: int) -> None:
            self._wait(
                "a synchronously streaming standby",
                lambda: streams_synchronously(bin_dir, self.processes["postgres"].port),
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

    def _valkey_recipe(self, name: ServerName) -> Recipe:
        binary, workdir = valkey_binary(), self._root_path(name.replace("_", "-"))
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
                flags["--replicaof"] = f"{HOST} {self.processes['valkey'].port}"
            return [str(binary), *(arg for pair in flags.items() for arg in pair)]

        return Recipe(
            name=name,
            argv=argv,
            probe=replica_in_sync if name == "valkey_replica" else valkey_pongs,
            stop_signal=signal.SIGTERM,
            env=clean_env(),
            cwd=workdir,
        )

    def _sentinel_recipe(self, name: ServerName) -> Recipe:
        binary, workdir = valkey_binary(), self._root_path("valkey")

        def argv(port: int) -> list[str]:
            # A sentinel rewrites its configuration file as it learns: one per start.
            conf = workdir / f"{name}.conf"
            master = self.processes["valkey"].port
            conf.write_text(
                f"port {port}\nbind {HOST}\ndir {workdir}\n"
                f"sentinel monitor {SENTINEL_MASTER} {HOST} {master} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
                f"sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
                f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
            )
            return [str(binary), str(conf), "--sentinel"]

        return Recipe(
            name=name,
            argv=argv,
            probe=lambda port: sentinel_sees_all(
                port, sentinels=len(_SENTINELS), master=SENTINEL_MASTER
            ),
            stop_signal=signal.SIGTERM,
            env=clean_env(),
            cwd=workdir,
        )

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not ready():
            if self._closing.is_set():
                raise ServerFailed("the stack is stopping")
            if time.monotonic() > deadline:
                raise ServerFailed(f"no {what} within {self._start_timeout:g}s")
            time.sleep(POLL_SECONDS * 5)

    def _openbao_recipe(self) -> Recipe:
        binary, home = bao_binary(), self._root_path("openbao")
        token = self._token

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

    def _root_path(self, sub: str) -> Path:
        assert self._root is not None  # set by _prepare before any recipe is built
        return self._root / sub

    def _start_all(self, names: list[ServerName]) -> dict[ServerName, str]:
        """Start ``names`` concurrently; returns the failures (empty on success)."""
        failures: dict[ServerName, str] = {}
        pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="embedded-stack")
        try:
            futures = {name: pool.submit(self._start_one, name) for name in names}
            for name, future in futures.items():
                try:
                    server = future.result()
                except (ServerFailed, StackError) as exc:
                    failures[name] = str(exc)
                except Exception as exc:  # reported by name in StackStartError, not swallowed
                    failures[name] = f"{type(exc).__name__}: {exc}"
                else:
                    with self._lock:
                        self._servers[name] = server
        except BaseException:  # e.g. Ctrl-C: make the workers give up before waiting for them
            self._closing.set()
            raise
        finally:
            pool.shutdown(wait=True)
        return failures

    def _start_one(self, name: ServerName) -> ServerProcess:
        if name == "postgres":
            self._initdb()
        elif name == "postgres_standby":
            self._basebackup()
        return self._launch(self._recipes[name], port=None)

    def _basebackup(self) -> None:
        """The standby's data directory: a copy of the running primary, set to follow it."""
        recipe = self._recipes["postgres_standby"]
        if (recipe.cwd / "standby.signal").exists():
            return  # a standby kept in data_dir from an earlier run: it catches up
        if (recipe.cwd / "PG_VERSION").exists():  # promoted in an earlier run: copy afresh
            shutil.rmtree(recipe.cwd)
            recipe.cwd.mkdir(mode=0o700)
            if recipe.run_as is not None:
                os.chown(recipe.cwd, recipe.run_as.uid, recipe.run_as.gid)
        assert self._pg_bin is not None  # set by _prepare
        argv = [str(self._pg_bin / "pg_basebackup"), "-h", HOST]
        argv += ["-p", str(self.processes["postgres"].port), "-U", "postgres"]
        argv += ["-D", str(recipe.cwd), "-X", "stream", "-R", "-c", "fast", "--no-sync"]
        self._run_once("pg_basebackup", argv, recipe)

    def _initdb(self) -> None:
        """Create the cluster unless ``data_dir`` already holds one."""
        recipe = self._recipes["postgres"]
        pgdata = recipe.cwd
        if (pgdata / "PG_VERSION").exists():
            return
        assert self._pg_bin is not None  # set by _prepare
        argv = [str(self._pg_bin / "initdb"), "-D", str(pgdata), "-U", "postgres"]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"]
        if self._fast:
            argv.append("--no-sync")
        self._run_once("initdb", argv, recipe)

    def _run_once(self, tool: str, argv: list[str], recipe: Recipe) -> None:
        """A short-lived tool run as the server's user, waited for by this worker thread (so
        it need not be forked by the spawner); its output goes to ``logs/<tool>.log``."""
        log_path = self._root_path("logs") / f"{tool}.log"
        with log_path.open("ab") as log:
            offset = log.tell()
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(recipe.env),
                cwd=self._root,
                preexec_fn=self._preexec,
                check=False,
                timeout=self._start_timeout,
                **self._user_kwargs(recipe.run_as),
            )
        if result.returncode != 0:
            log_tail = tail(log_path, offset, ())
            raise ServerFailed(
                f"{tool} exited with {result.returncode}; {log_path.name}:\n{log_tail}"
            )

    def _launch(self, recipe: Recipe, *, port: int | None) -> ServerProcess:
        """Spawn and wait until ready. A bind conflict is retried: on a fresh port, or after a
        pause on the same *port* (a restart keeps its address)."""
        log_path = self._root_path("logs") / f"{recipe.name}.log"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            chosen = port if port is not None else free_port(pair=recipe.port_pair)
            offset = log_path.stat().st_size if log_path.exists() else 0
            proc = self._spawn(recipe, chosen, log_path)
            try:
                self._await_ready(recipe, proc, chosen, offset)
                if recipe.after_ready is not None:
                    recipe.after_ready(chosen)
            except ServerFailed as exc:
                terminate([(recipe.name, proc, recipe.stop_signal)])
                if exc.bind_conflict and attempt < PORT_ATTEMPTS:
                    time.sleep(0.2 * attempt if port is not None else 0)
                    continue
                log_tail = tail(log_path, offset, (self._token,))
                status = f"exit status {proc.returncode}"
                raise ServerFailed(f"{exc} ({status}); {log_path.name}:\n{log_tail}") from None
            except Exception as exc:  # e.g. bootstrap_vault: reported with the log, not retried
                terminate([(recipe.name, proc, recipe.stop_signal)])
                log_tail = tail(log_path, offset, (self._token,))
                reason = f"{type(exc).__name__}: {exc}; {log_path.name}:\n{log_tail}"
                raise ServerFailed(reason) from exc
            except BaseException:
                terminate([(recipe.name, proc, recipe.stop_signal)])
                raise
            return ServerProcess(recipe.name, proc.pid, chosen, log_path)
        raise AssertionError("unreachable: the last attempt raises")

    def _spawn(self, recipe: Recipe, port: int, log_path: Path) -> subprocess.Popen[bytes]:
        assert self._spawner is not None  # set by _prepare

        argv = recipe.argv(port)  # before the lock: it may look up other servers' ports

        def spawn() -> subprocess.Popen[bytes]:
            with self._lock:  # stop() snapshots self._procs under the same lock
                if self._closing.is_set():
                    raise ServerFailed("the stack is stopping")
                with log_path.open("ab") as log:  # the child keeps its own descriptor
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=dict(recipe.env),
                        cwd=recipe.cwd,
                        preexec_fn=self._preexec,
                        start_new_session=True,  # its own group: Ctrl-C is ours to handle
                        **self._user_kwargs(recipe.run_as),
                    )
                self._procs[recipe.name] = proc
                return proc

        return self._spawner.call(spawn)

    @staticmethod
    def _user_kwargs(user: OsUser | None) -> dict[str, Any]:
        if user is None:
            return {}
        return {"user": user.uid, "group": user.gid, "extra_groups": []}

    def _await_ready(
        self, recipe: Recipe, proc: subprocess.Popen[bytes], port: int, log_offset: int
    ) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._closing.is_set():
                raise ServerFailed("the stack is stopping")
            if has_exited(proc):  # not reaped: terminate still signals its group
                log = self._root_path("logs") / f"{recipe.name}.log"
                raise ServerFailed(
                    f"exited before answering on port {port}",
                    bind_conflict=bool(BIND_CONFLICT.search(tail(log, log_offset, ()))),
                )
            if recipe.probe(port):
                return
            if time.monotonic() > deadline:
                raise ServerFailed(f"did not answer within {self._start_timeout:g}s")
            time.sleep(POLL_SECONDS)
