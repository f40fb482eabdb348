"""``broker serve``: one process, two listeners, TLS, and a drain that loses no request.

* **Listeners.** The internal one (``BROKER_HOST:PORT``) serves ``/v1/*``, ``/admin``,
  ``/metrics`` and the probes; the public one (``BROKER_PUBLIC_HOST:PUBLIC_PORT``) serves only
  the install flow (``/oauth/*``), which is all an ingress should expose to browsers. Without
  a public port the internal listener serves the install flow too. Both share one set of
  services (one pool, one cache, one refresher): two uvicorn servers on one event loop.
* **TLS.** With ``BROKER_TLS_CERT_FILE``/``KEY_FILE`` both listeners speak HTTPS; the files
  are looked at every few seconds and re-read when they change (cert-manager rewrites a
  mounted Secret in place), so new connections get the new certificate without a restart.
  A half-written pair (certificate and key not matching yet) keeps the old one.
* **Proxies.** ``X-Forwarded-Proto``/``-For`` are believed only from ``BROKER_TRUSTED_PROXIES``.
* **Lifecycle.** Listen at once (``/livez`` answers), pre-warm the token cache, then turn ready.
  On SIGTERM: unready at once, keep serving for ``BROKER_DRAIN_SECONDS`` while load balancers
  stop routing here, stop accepting, let in-flight requests finish (at most
  ``BROKER_SHUTDOWN_TIMEOUT``), then close the services, which lets in-flight refreshes store
  what HubSpot answered. SIGINT (Ctrl-C) or a second SIGTERM skips the drain period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Callable, Generator
from typing import Any

import structlog
import uvicorn

from broker import logs
from broker.app import internal_app, open_services, public_app, warm_up
from broker.config import Settings
from broker.core.tasks import cancel_and_wait

log = structlog.get_logger(__name__)
#: Seconds between looks at the certificate files.
CERT_CHECK_SECONDS = 5.0


class Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve` and hands every request the
    shared services as ``scope["state"]`` (its own lifespan is off)."""

    def __init__(self, config: uvicorn.Config, state: dict[str, Any]) -> None:
        super().__init__(config)
        self._state = state

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        # What Server._serve would do first; serve() drives the steps itself.
        self.lifespan = self.config.lifespan_class(self.config)
        self.lifespan.state.update(self._state)
        await super().startup(sockets)


def _config(settings: Settings, app: Any, host: str, port: int) -> uvicorn.Config:
    proxies = settings.trusted_proxy_list
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_config=None,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies,
        ssl_certfile=settings.tls_cert_file or None,
        ssl_keyfile=settings.tls_key_file or None,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
        server_header=False,
    )
    config.load()
    return config


def listeners(settings: Settings, state: dict[str, Any]) -> list[Listener]:
    """The internal listener, and the public one when ``public_port`` is set."""
    public = bool(settings.public_port)
    found = [
        Listener(
            _config(settings, internal_app(with_oauth=not public), settings.host, settings.port),
            state,
        )
    ]
    if public:
        app = public_app()
        found.append(
            Listener(_config(settings, app, settings.public_host, settings.public_port), state)
        )
    return found


def run(settings: Settings, *, checkpoint: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain (see the module docstring)."""
    logs.configure(settings.log_level, settings.log_format)
    loop_factory = uvicorn.Config(app="", loop="auto").get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings, checkpoint=checkpoint))


async def serve(settings: Settings, *, checkpoint: Callable[[str], None] | None = None) -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("server.signal", signal=sig.name, draining=stop.is_set())
        if stop.is_set() or sig is signal.SIGINT:
            hurry.set()  # Ctrl-C (a person at a terminal) or a second signal: no drain period
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with open_services(settings, checkpoint=checkpoint) as services:
            servers = listeners(settings, {"services": services})
            for server in servers:
                await server.startup()
            ticking = [asyncio.create_task(s.main_loop(), name="listener") for s in servers]
            warming = asyncio.create_task(warm_up(services), name="warm-up")
            watching = asyncio.create_task(_watch_certificates(settings, servers), name="tls")
            await stop.wait()
            services.health.drain()
            log.info("server.draining", seconds=settings.drain_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), timeout=settings.drain_seconds)
            await cancel_and_wait(warming)
            await cancel_and_wait(watching)
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*ticking)
            await asyncio.gather(*(s.shutdown() for s in servers))
            log.info("server.stopped_listening")
        # Leaving open_services closed the refresher (in-flight refreshes stored), flushed
        # the audit queue and closed every backend client.
        log.info("server.stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _stamp(settings: Settings) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in (settings.tls_cert_file, settings.tls_key_file):
        st = os.stat(path)
        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


async def _watch_certificates(settings: Settings, servers: list[Listener]) -> None:
    """Re-read the certificate and key into the listeners' TLS contexts when they change."""
    if not settings.tls_cert_file:
        return
    contexts = [s.config.ssl for s in servers if isinstance(s.config.ssl, ssl.SSLContext)]
    seen = _stamp(settings)
    while True:
        await asyncio.sleep(CERT_CHECK_SECONDS)
        try:
            current = _stamp(settings)
            if current == seen:
                continue
            for context in contexts:
                context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            # Mid-rotation (key and certificate not matching yet): keep serving the old one.
            log.warning("tls.reload_failed", error=type(exc).__name__)
            continue
        seen = current
        log.info("tls.reloaded")
