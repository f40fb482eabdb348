"""Concurrent requests for one backend gathered into batch calls (a group commit).

A cold replica gets a cache miss per portal, each wanting one Transit decrypt; Transit takes
a ``batch_input`` of many. :class:`Coalescer` sends what was submitted in the same event-loop
turn as one batch, at once, and while ``max_inflight`` batches are out it queues the rest,
sending it as the next batch the moment one comes back. Alone, a request waits for nothing;
under load, batches grow by themselves, so calls per request fall as the load rises.

Per-request errors stay per request. ``run`` may answer an item with an exception instead of
a result (the backend refused that item alone): that item's submission fails with it, the
others get their results. When a batch of several submissions fails whole with one of
``split_on`` (an item the backend refused, e.g. a tampered ciphertext), it is sent again in
halves, and so on down to single submissions, so only the bad one fails (at a cost of about
two calls per halving, not one call per submission). Any other error (the backend is down)
fails every submission of the batch at once: retrying them one by one would only multiply
the load on a backend that is already failing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await submit(items)`` returns ``run(items)``'s results for exactly ``items``, in
    order, possibly computed in one ``run`` call together with other submissions; or raises
    the first exception ``run`` answered one of them with."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_items: int,
        max_inflight: int = 2,
        split_on: tuple[type[Exception], ...] = (),
    ) -> None:
        self._run = run
        self._max_items = max_items
        self._max_inflight = max_inflight
        self._split_on = split_on
        self._pending: deque[tuple[list[T], asyncio.Future[list[R]]]] = deque()
        self._inflight: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def submit(self, items: Sequence[T]) -> list[R]:
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._pending and len(self._inflight) < self._max_inflight:
            batch: list[tuple[list[T], asyncio.Future[list[R]]]] = []
            size = 0
            while self._pending and (
                not batch or size + len(self._pending[0][0]) <= self._max_items
            ):
                submission = self._pending.popleft()
                if submission[1].done():  # its caller was cancelled while it waited
                    continue
                batch.append(submission)
                size += len(submission[0])
            if batch:
                task = asyncio.create_task(self._send(batch), name="coalesced-batch")
                self._inflight.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    async def _send(self, batch: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        try:
            results = await self._run([item for items, _ in batch for item in items])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except self._split_on as exc:
            if len(batch) == 1:
                _fail(batch[0][1], exc)
            else:  # bisect: a bad item costs a few calls, not one per submission
                half = len(batch) // 2
                await asyncio.gather(self._send(batch[:half]), self._send(batch[half:]))
            return
        except Exception as exc:
            for _, future in batch:
                _fail(future, exc)
            return
        if len(results) != sum(len(items) for items, _ in batch):
            for _, future in batch:
                _fail(future, RuntimeError("a batch answered a different number of items"))
            return
        start = 0
        for items, future in batch:
            part = results[start : start + len(items)]
            start += len(items)
            refused = next((r for r in part if isinstance(r, Exception)), None)
            if refused is not None:
                _fail(future, refused)
            elif not future.done():
                future.set_result(cast(list[R], list(part)))


def _fail(future: asyncio.Future[R], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
