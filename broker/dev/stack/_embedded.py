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
    BackendUrls,
    OsUser,
    ServerName,
    ServerProcess,
    StackError,
    StackStartError,
)
from broker.dev.stack._probes import bao_healthy, postgres_answers, valkey_pongs
from broker.dev.stack._processes import (
    BIND_CONFLICT,
    POLL_SECONDS,
    PORT_ATTEMPTS,
    Recipe,
    ServerFailed,
    Spawner,
    clean_env,
    die_with_parent,
    free_port,
    has_exited,
    tail,
    terminate,
)
from broker.dev.stack._vault import bootstrap_vault

_log = structlog.get_logger(__name__)


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
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        fast: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._fast = fast
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
            failures = self._start_all()
        except BaseException:
            self.stop()
            raise
        if failures:
            self.stop()
            raise StackStartError(failures)
        ports = {name: server.port for name, server in self.processes.items()}
        self._urls = BackendUrls(
            database_url=f"postgresql://postgres@{HOST}:{ports['postgres']}/postgres",
            redis_url=f"redis://{HOST}:{ports['valkey']}/0",
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
            "postgres": self._postgres_recipe(pgdata, pg_user),
            "valkey": self._valkey_recipe(),
            "openbao": self._openbao_recipe(),
        }

    def _postgres_recipe(self, pgdata: Path, user: OsUser | None) -> Recipe:
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
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

        def argv(port: int) -> list[str]:
            return [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port), *options]

        return Recipe(
            name="postgres",
            argv=argv,
            probe=lambda port: postgres_answers(bin_dir, port),
            stop_signal=signal.SIGINT,  # fast shutdown: roll back sessions, checkpoint, exit
            env=clean_env(),
            cwd=pgdata,
            run_as=user,
        )

    def _valkey_recipe(self) -> Recipe:
        binary, workdir = valkey_binary(), self._root_path("valkey")

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
            return [str(binary), *(arg for pair in flags.items() for arg in pair)]

        return Recipe(
            name="valkey",
            argv=argv,
            probe=valkey_pongs,
            stop_signal=signal.SIGTERM,
            env=clean_env(),
            cwd=workdir,
        )

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

    def _start_all(self) -> dict[ServerName, str]:
        """Start the servers concurrently; returns the failures (empty on success)."""
        failures: dict[ServerName, str] = {}
        pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="embedded-stack")
        try:
            futures = {name: pool.submit(self._start_one, name) for name in self._recipes}
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
        return self._launch(self._recipes[name], port=None)

    def _initdb(self) -> None:
        """Create the cluster unless ``data_dir`` already holds one. initdb is short-lived and
        waited for by this worker thread, so it need not be forked by the spawner."""
        recipe = self._recipes["postgres"]
        pgdata = recipe.cwd
        if (pgdata / "PG_VERSION").exists():
            return
        assert self._pg_bin is not None  # set by _prepare
        argv = [str(self._pg_bin / "initdb"), "-D", str(pgdata), "-U", "postgres"]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"]
        if self._fast:
            argv.append("--no-sync")
        log_path = self._root_path("logs") / "initdb.log"
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
            raise ServerFailed(f"initdb exited with {result.returncode}; initdb.log:\n{log_tail}")

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

        def spawn() -> subprocess.Popen[bytes]:
            with self._lock:  # stop() snapshots self._procs under the same lock
                if self._closing.is_set():
                    raise ServerFailed("the stack is stopping")
                with log_path.open("ab") as log:  # the child keeps its own descriptor
                    proc = subprocess.Popen(
                        recipe.argv(port),
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
