"""Child processes of the dev stack: forked by one long-lived thread, dying with their parent,
stopped politely then firmly, on ports chosen free (and retried on a bind race)."""

from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from broker.dev.stack._common import HOST, OsUser, ServerName, StackError

_T = TypeVar("_T")
PORT_ATTEMPTS = 4
POLL_SECONDS = 0.02
LOG_TAIL_LINES = 25
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
BIND_CONFLICT = re.compile(r"address already in use", re.IGNORECASE)
UNSEAL_KEY = re.compile(r"(Unseal Key[^:]*:\s*)\S+")
UNSEAL_KEY_VALUE = re.compile(r"Unseal Key[^:]*:\s*(\S+)")


def grace_seconds(name: ServerName) -> float:
    """How long a server gets to stop after its polite signal: PostgreSQL checkpoints."""
    return 10.0 if name.startswith("postgres") else 5.0


@dataclass(frozen=True)
class Recipe:
    """How to run one server; the port is chosen per attempt."""

    name: ServerName
    argv: Callable[[int], list[str]]
    probe: Callable[[int], bool]  # True once the server answers a real request
    stop_signal: signal.Signals
    env: Mapping[str, str]
    cwd: Path
    run_as: OsUser | None = None
    port_pair: bool = False  # `bao server -dev` also listens on port + 1 (cluster)
    after_ready: Callable[[int], None] | None = None


class ServerFailed(Exception):
    def __init__(self, reason: str, *, bind_conflict: bool = False) -> None:
        super().__init__(reason)
        self.bind_conflict = bind_conflict


class Spawner:
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


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` arming PR_SET_PDEATHSIG(SIGKILL), or None where Linux's prctl is absent.

    It runs in the child after the switch to another user (which would clear the setting),
    and exits at once if the parent died before the setting took effect.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    parent = os.getpid()

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            os.write(2, b"embedded stack: prctl(PR_SET_PDEATHSIG) failed\n")
            os._exit(127)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
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


def send_signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (a zombie's group may refuse signals)


def terminate(procs: list[tuple[ServerName, subprocess.Popen[bytes], signal.Signals]]) -> None:
    """Stop servers concurrently: polite signal, grace period, SIGKILL to the group, reap."""
    started = time.monotonic()
    for _, proc, sig in procs:
        if not has_exited(proc):
            send_signal(proc.pid, sig, group=False)
            send_signal(proc.pid, signal.SIGCONT, group=True)  # a SIGSTOPped server must act on it
    for name, proc, _ in procs:
        deadline = started + grace_seconds(name)
        while not has_exited(proc) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if proc.returncode is None:
            send_signal(proc.pid, signal.SIGKILL, group=True)  # stragglers, e.g. PG backends
        proc.wait()


def free_port(*, pair: bool) -> int:
    """A loopback port free right now (and port + 1 too when *pair*); racy by nature, so
    callers retry on a bind conflict."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
            if not pair:
                return port
            if port < 65535:
                with socket.socket() as neighbour:
                    try:
                        neighbour.bind((HOST, port + 1))
                    except OSError:
                        continue
                    return port
    raise StackError("found no free loopback port")


def tail(log_path: Path, offset: int, redact: tuple[str, ...]) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    for secret in redact:
        text = text.replace(secret, "<redacted>")
    text = UNSEAL_KEY.sub(r"\1<redacted>", text)
    lines = text.rstrip().splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log empty)"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus anything that would steer a server or its clients."""
    drop = ("PG", "VAULT_", "BAO_", "VALKEY_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(LC_ALL="C", LANG="C", **extra)
    return env
