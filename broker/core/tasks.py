"""Background-task plumbing shared by every loop the broker runs."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from broker import metrics
from broker.errors import BrokerError

T = TypeVar("T")
log = structlog.get_logger(__name__)
#: Jitter for every background wait and retry, from a generator of our own: never the
#: process-wide one (tests and libraries seed and watch it).
JITTER = random.Random()  # noqa: S311 - jitter, not crypto


async def cancel_and_wait(task: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has really stopped."""
    if task is None:
        return
    task.cancel()
    await _ended(task)


async def finish_even_if_cancelled(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile (shutdown, a client
    gone): the cancellation is re-raised once ``work`` is done. For steps that must not be
    cut in half, like storing a token response HubSpot already sent."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class BackgroundLoop:
    """One background loop: ``step()`` runs from :meth:`start` until :meth:`stop` or
    :meth:`close`, every ``interval`` seconds, jittered by ``±jitter`` of it so that replicas
    started together drift apart.

    A step that returns True has more to do at once: it runs again as soon as ``backlog()``
    returns (e.g. once a delivery slot frees up), or at once without one. A failing step
    never ends the loop: it is counted in ``broker_background_failures_total{loop, kind}``
    (``backend`` for a :class:`~broker.errors.BrokerError`, ``bug`` for anything else),
    logged, and the loop goes on at its next interval. ``wait_first``: the first step only
    after one interval (a restart storm does not run every replica's step at once).

    ``interval`` may be a function instead: asked after each step for the wait before the
    next one (a schedule of the loop's own, e.g. a token's TTL), and not jittered further."""

    def __init__(
        self,
        loop: metrics.Background,
        step: Callable[[], Awaitable[object]],
        *,
        interval: float | Callable[[], float],
        jitter: float = 0.1,
        wait_first: bool = False,
        backlog: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.name = loop
        self._step = step
        self._interval = interval
        self._jitter = jitter
        self._wait_first = wait_first
        self._backlog = backlog
        self._stopping = asyncio.Event()
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backend_failures = metrics.BACKGROUND_FAILURES.labels(
            loop, metrics.FailureKind.BACKEND
        )
        self._bugs = metrics.BACKGROUND_FAILURES.labels(loop, metrics.FailureKind.BUG)

    def start(self) -> None:
        """Start the loop, once: a loop that ran cannot be started again."""
        if self._task is not None or self._stopping.is_set():
            raise RuntimeError(f"the {self.name} loop starts once")
        self._task = asyncio.create_task(self._run(), name=self.name)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop_soon(self) -> None:
        """Start no further step (the one in flight goes on)."""
        self._stopping.set()
        self._woken.set()

    def wake(self) -> None:
        """Run the next step now instead of at the end of the interval (e.g. a batch is
        full)."""
        self._woken.set()

    async def stop(self) -> None:
        """Start no further step, and wait for the one in flight to finish."""
        self.stop_soon()
        if self._task is not None:
            await _ended(self._task)

    async def close(self) -> None:
        """Stop at once (a step in flight is cancelled) and wait until the loop has ended."""
        self.stop_soon()
        await cancel_and_wait(self._task)

    async def run_once(self) -> bool:
        """One step, its failure counted and logged, never raised. True when it has more."""
        try:
            return await self._step() is True
        except BrokerError as exc:
            self._backend_failures.inc()
            log.warning("background.step_failed", loop=self.name, code=exc.code)
        except Exception:
            self._bugs.inc()
            log.exception("background.step_crashed", loop=self.name)
        return False

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the loop is stopped or woken meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout=seconds)
        if not self._stopping.is_set():
            self._woken.clear()

    async def _after_backlog(self) -> None:
        """Wait for the backlog's cue (at once without one); a failing wait is counted like
        a failing step, never the end of the loop."""
        if self._backlog is None:
            await asyncio.sleep(0)
            return
        try:
            await self._backlog()
        except Exception:
            self._bugs.inc()
            log.exception("background.backlog_crashed", loop=self.name)
            await self.pause(self.next_delay())

    def next_delay(self) -> float:
        if callable(self._interval):
            return self._interval()
        spread = self._interval * self._jitter
        return self._interval + JITTER.uniform(-spread, spread)

    async def _run(self) -> None:
        if self._wait_first:
            await self.pause(self.next_delay())
        while not self._stopping.is_set():
            if await self.run_once():
                await self._after_backlog()
            else:
                await self.pause(self.next_delay())


async def _ended(task: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
    """Wait until ``task`` has ended, whatever it ended with. Unlike awaiting it under
    ``suppress(CancelledError)``, a cancellation of the waiter itself is not swallowed."""
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: what it ended with is not the waiter's to raise
