"""Child processes of the bench: started with a death signal (no orphans even when the bench
is SIGKILLed), optionally pinned to CPUs, always stopped; and what ``/proc`` says about them.

Every process is forked from the main thread, which lives until the bench ends, so Linux's
``PR_SET_PDEATHSIG`` (which fires when the forking *thread* exits) fires only then.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

#: The repository root: children run there, so ``python -m bench.client`` always resolves.
ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """(target CPUs, load CPUs): one core for the server under test and another for the load
    generator, so every target gets the same single core; ``(None, None)`` on one core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def _preexec(cpus: set[int] | None) -> Callable[[], None] | None:
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return arm


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cpus: set[int] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv``; it dies with this process and runs on ``cpus`` when given."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and wrk, never user input
        list(argv),
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=ROOT,
        preexec_fn=_preexec(cpus),  # forked from the main thread only
    )


def stop(process: subprocess.Popen[bytes], *, grace: float = 15.0) -> None:
    """SIGTERM (after SIGCONT), wait ``grace`` seconds, then SIGKILL; always reaps."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


class Server:
    """One HTTP server child on 127.0.0.1:``port``, ready once ``ready_path`` answers 200."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
        cpus: set[int] | None = None,
        ready_path: str = "/",
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as handle:
            self.process = spawn(argv, env=env, cpus=cpus, stdout=handle, stderr=handle)
        try:
            self._await_ready(ready_path)
        except BaseException:
            stop(self.process)
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _await_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited during start:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {path} within {timeout:g} s")

    def close(self) -> None:
        stop(self.process)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from ``/proc/<pid>/statm``."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def pin_threads(pid: int, cpus: set[int] | None) -> None:
    """Set the affinity of every thread of an already running process (e.g. OpenBao)."""
    wanted = cpus if cpus is not None else os.sched_getaffinity(0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(task.name), wanted)
