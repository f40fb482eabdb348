"""Serve a `Simulator` over real HTTP on loopback, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from broker.dev.simulator.app import create_app
from broker.dev.simulator.state import Simulator

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def make_config(sim: Simulator, host: str, port: int) -> uvicorn.Config:
    """uvicorn settings shared by `run_in_thread` and the CLI.

    The access log stays off: the v1 lookup paths carry tokens, and a URL in a log line
    would leak them. `log_config=None` leaves the host process's logging untouched.
    """
    return uvicorn.Config(
        create_app(sim),
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        log_level="warning",
        ws="none",
        lifespan="off",
        timeout_graceful_shutdown=2,
    )


@contextmanager
def run_in_thread(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `sim` until the block exits; yields the base URL (`http://127.0.0.1:PORT`).

    Port 0 picks a free port. Raises RuntimeError if the server does not come up.
    """
    server = uvicorn.Server(make_config(sim, host, port))
    thread = threading.Thread(target=server.run, name="hubspot-simulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(_STOP_TIMEOUT_S)
            raise RuntimeError(f"the HubSpot simulator did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        bound_port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("the HubSpot simulator did not stop in time")
