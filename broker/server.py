"""``broker serve``: one process, two listeners, TLS, and a drain that loses no request.

* **Listeners.** The internal one (``BROKER_HOST:PORT``) serves ``/v1/*``, ``/admin``,
  ``/metrics`` and the probes; the public one (``BROKER_PUBLIC_HOST:PUBLIC_PORT``) serves only
  the install flow (``/oauth/*``), which is all an ingress should expose to browsers. Without
  a public port the internal listener serves the install flow too. Both share one set of
  services (one pool, one cache, one refresher): two uvicorn servers on one event loop.
* **TLS.** With ``BROKER_TLS_CERT_FILE``/``KEY_FILE`` both listeners speak HTTPS; the files
  are looked at every few seconds and re-read when they change (cert-manager rewrites a
  mounted Secret in place), so new connections get the new certificate without a restart.
  A half-written pair (certificate and key not matching yet) keeps the old one in use.
* **Proxies.** ``X-Forwarded-Proto``/``-For`` are believed only from ``BROKER_TRUSTED_PROXIES``.
* **Lifecycle.** Listen at once (``/livez`` answers), pre-warm the token cache, then turn ready.
  On SIGTERM: unready at once and the refresher claims nothing more; keep serving for
  ``BROKER_DRAIN_SECONDS`` while load balancers stop routing here (responses then say
  ``Connection: close``, so keep-alive callers reconnect to another replica); stop accepting;
  within one ``BROKER_SHUTDOWN_TIMEOUT`` let in-flight requests finish, then in-flight
  refreshes and token loads (a response HubSpot already sent is stored); then close the
  services. SIGINT (Ctrl-C) or a second SIGTERM skips the drain period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from typing import Any

import structlog
import uvicorn

from broker import logs
from broker.app import internal_app, open_services, public_app, warm_up
from broker.config import Settings
from broker.core.refresh_policy import Checkpoint

log = structlog.get_logger(__name__)
#: Seconds between looks at the certificate files.
CERT_CHECK_SECONDS = 5.0


class Listener(uvicorn.Server):
    """A uvicorn server driven step by step by :func:`serve` (``startup``, ``main_loop``,
    ``shutdown``; never ``Server.serve``, so signals stay with :func:`serve`), handing every
    request the shared services as ``scope["state"]`` (its own lifespan is off)."""

    def __init__(self, config: uvicorn.Config, state: dict[str, Any]) -> None:
        super().__init__(config)
        self._state = state

    async def startup(self, sockets: Any = None) -> None:
        # What Server._serve would do first; serve() drives the steps itself.
        self.lifespan = self.config.lifespan_class(self.config)
        self.lifespan.state.update(self._state)
        await super().startup(sockets)


class Certificates:
    """The listeners' TLS. Each listener's context answers every handshake with the newest
    certificate pair that loaded whole: a changed pair is loaded into a *new* context and
    only then handed out (through the SNI callback, which OpenSSL calls for every client
    hello, with or without a server name). Loading into the live context instead would leave
    it holding a new certificate with the old key when the pair is caught mid-rotation."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self._files = (cert_file, key_file)
        self._stamp = self._stat()
        self.current = self._load()  # raises at start-up: a broken pair is a config error

    def listener_context(self) -> ssl.SSLContext:
        context = self._load()
        context.sni_callback = self._pick
        return context

    def _pick(self, connection: ssl.SSLObject, _: str | None, __: ssl.SSLContext) -> None:
        connection.context = self.current

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self._files)
        return context

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._files:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def reload_if_changed(self) -> bool:
        """True when a changed pair was loaded; a pair that does not load (mid-rotation:
        certificate and key not matching yet) is tried again at the next look."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            self.current = self._load()
        except (OSError, ssl.SSLError) as exc:
            log.warning("tls.reload_failed", error=type(exc).__name__)
            return False
        self._stamp = stamp
        log.info("tls.reloaded")
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CERT_CHECK_SECONDS)
            self.reload_if_changed()


def _config(
    settings: Settings, app: Any, host: str, port: int, tls: Certificates | None
) -> uvicorn.Config:
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
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
        server_header=False,
    )
    config.load()
    if tls is not None:
        config.ssl = tls.listener_context()  # what Server.startup hands to create_server
    return config


def listeners(
    settings: Settings, state: dict[str, Any], tls: Certificates | None = None
) -> list[Listener]:
    """The internal listener, and the public one when ``public_port`` is set."""
    public = bool(settings.public_port)
    internal = internal_app(with_oauth=not public)
    found = [Listener(_config(settings, internal, settings.host, settings.port, tls), state)]
    if public:
        config = _config(settings, public_app(), settings.public_host, settings.public_port, tls)
        found.append(Listener(config, state))
    return found


def run(settings: Settings, *, checkpoint: Checkpoint | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain (see the module docstring)."""
    logs.configure(settings.log_level, settings.log_format)
    loop_factory = uvicorn.Config(app="", loop="auto").get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings, checkpoint=checkpoint))


async def serve(settings: Settings, *, checkpoint: Checkpoint | None = None) -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("server.signal", signal=sig.name, draining=stop.is_set())
        if stop.is_set() or sig is signal.SIGINT:
            hurry.set()  # Ctrl-C (a person at a terminal) or a second signal: no drain period
        stop.set()

    tls = (
        Certificates(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_cert_file
        else None
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with open_services(settings, checkpoint=checkpoint) as services:
            servers = listeners(settings, {"services": services}, tls)
            for server in servers:
                await server.startup()
            ticking = [asyncio.create_task(s.main_loop(), name="listener") for s in servers]
            helpers = [asyncio.create_task(warm_up(services), name="warm-up")]
            if tls is not None:
                helpers.append(asyncio.create_task(tls.watch(), name="tls-reload"))
            await stop.wait()
            services.health.drain()  # unready; the refresher claims nothing more
            log.info("server.draining", seconds=settings.drain_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), timeout=settings.drain_seconds)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            # One budget for what is in flight: requests first, then refreshes and loads.
            deadline = loop.time() + settings.shutdown_timeout
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*ticking)
            await asyncio.gather(*(s.shutdown() for s in servers))
            log.info("server.stopped_listening")
            await services.health.settle(max(0.0, deadline - loop.time()))
        # Leaving open_services flushed the audit queue and closed every backend client.
        log.info("server.stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
