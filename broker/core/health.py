"""Readiness and backend health (DESIGN.md, "Deployed shape").

Readiness means "this replica can answer token requests", nothing more. A load balancer
pulls an unready replica out of rotation, so a readiness that failed whenever Redis or Vault
failed would turn one backend's failover into a total outage, while every replica could still
serve its cached tokens (and refresh without Redis). So a replica is unready only:

* while it starts (until pre-warming is over),
* while it drains after SIGTERM,
* when PostgreSQL does not answer **and** it holds no token it could still serve.

Redis, Vault and HubSpot health are signals for people: ``broker_backend_up{backend}``
(checked every few seconds in the background), alerts on it, and ``/readyz?verbose``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog

from broker import metrics
from broker.core.tasks import BackgroundLoop
from broker.errors import BrokerError

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[None]]
#: How long ``/readyz`` waits for PostgreSQL: well inside a probe's timeout.
READY_TIMEOUT = 1.5
#: How long each backend check may take before it counts as down.
CHECK_TIMEOUT = 2.0


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    #: ``ready``, ``serving_cached`` (PostgreSQL is down but cached tokens are served),
    #: ``starting``, ``draining``, or ``postgres_unavailable`` (down, nothing cached).
    reason: str


class Health:
    """The replica's lifecycle phase and its backends' health.

    ``checks`` maps a :class:`~broker.metrics.Backend` name to an async check that raises
    when the backend cannot be used; ``postgres`` must be among them. ``serves_cached``
    says whether this replica holds a token it could still serve; ``hubspot_down`` whether
    HubSpot calls are being held off (the circuit breaker is open)."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        serves_cached: Callable[[], bool],
        hubspot_down: Callable[[], bool],
        interval: float = 5.0,
    ) -> None:
        self._checks = dict(checks)
        self._serves_cached = serves_cached
        self._hubspot_down = hubspot_down
        self._phase = Phase.STARTING
        self._loop = BackgroundLoop(metrics.Background.HEALTH, self.backends, interval=interval)
        self._on_drain: list[Callable[[], None]] = []
        self._in_flight: list[Callable[[float], Awaitable[None]]] = []

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def draining(self) -> bool:
        return self._phase is Phase.DRAINING

    def when_draining(self, callback: Callable[[], None]) -> None:
        """``callback`` runs when draining starts (e.g. the refresher stops claiming)."""
        self._on_drain.append(callback)

    def wait_on_shutdown(self, waiter: Callable[[float], Awaitable[None]]) -> None:
        """``waiter(timeout)`` is awaited by :meth:`settle`: work in flight to let finish."""
        self._in_flight.append(waiter)

    async def settle(self, timeout: float) -> None:
        """Let every registered piece of work in flight finish, within ``timeout`` in all."""
        await asyncio.gather(*(waiter(timeout) for waiter in self._in_flight))

    def serving(self) -> None:
        """Start-up (and pre-warming) is over: ready, unless already draining."""
        if self._phase is Phase.STARTING:
            self._phase = Phase.READY
            metrics.READY.set(1)
            log.info("health.ready")

    def drain(self) -> None:
        """Shutting down: unready from now on, whatever the backends say."""
        self._phase = Phase.DRAINING
        metrics.READY.set(0)
        log.info("health.draining")
        for callback in self._on_drain:
            callback()

    async def readiness(self) -> Readiness:
        result = await self._readiness()
        metrics.READY.set(1 if result.ready else 0)
        return result

    async def _readiness(self) -> Readiness:
        if self._phase is not Phase.READY:
            return Readiness(False, self._phase.value)
        problem = await _run(self._checks[metrics.Backend.POSTGRES], READY_TIMEOUT)
        _set_up(metrics.Backend.POSTGRES, problem is None)
        if problem is None:
            return Readiness(True, "ready")
        if self._serves_cached():
            return Readiness(True, "serving_cached")
        return Readiness(False, "postgres_unavailable")

    async def backends(self) -> dict[str, str]:
        """Every backend's state (``ok`` or a problem code), checked now, concurrently;
        ``broker_backend_up`` follows."""
        names = list(self._checks)
        results = await asyncio.gather(*(_run(self._checks[n], CHECK_TIMEOUT) for n in names))
        report = {name: problem or "ok" for name, problem in zip(names, results, strict=True)}
        report[metrics.Backend.HUBSPOT] = "circuit_open" if self._hubspot_down() else "ok"
        for name, state in report.items():
            _set_up(name, state == "ok")
        return report

    def start(self) -> None:
        """Keep ``broker_backend_up`` current in the background."""
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()


async def _run(check: Check, timeout: float) -> str | None:
    """None when ``check`` passed within ``timeout``; else a short problem code."""
    try:
        await asyncio.wait_for(check(), timeout=timeout)
    except BrokerError as exc:
        return exc.code
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # reported by type, never by message (it may hold a URL)
        log.warning("health.check_failed", error=type(exc).__name__)
        return "error"
    return None


def _set_up(backend: str, up: bool) -> None:
    metrics.BACKEND_UP.labels(backend).set(1 if up else 0)
