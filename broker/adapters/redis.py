"""Redis-protocol adapter (redis-py asyncio): advisory locks, "refreshed" notices,
single-use install state, and the per-app refresh rate (:mod:`broker.adapters.redis_rate`).
Implements ``Coordinator`` and ``RateLimiter``.

Redis is an optimisation, never the authority. Every call is bounded by ``redis_timeout``
with the client's own retries off; lock and notice calls report trouble as ``None``/``False``
so the caller falls back to the Postgres lease and polling.

No redis-py ``Lock`` objects: their token lives in a thread-local shared by every task on a
loop. Locks here are ``SET NX PX`` with a random owner per attempt and a compare-and-delete
release.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from broker import metrics
from broker.adapters.redis_budget import RedisBudget
from broker.adapters.redis_rate import AdaptiveRate
from broker.config import SentinelUrl, Settings
from broker.core.batching import Coalescer
from broker.core.tasks import cancel_and_wait
from broker.errors import UpstreamError

log = structlog.get_logger(__name__)

# Delete the key only while it still holds our owner value.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# The same, after publishing a "refreshed" notice (ARGV: owner, channel, message): the
# holder's last two steps in one round trip, in the protocol's order.
_NOTIFY_RELEASE = """
redis.call('publish', ARGV[2], ARGV[3])
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_UNAVAILABLE = (RedisError, OSError, TimeoutError)
_SUBSCRIPTION_PING = 5.0  # seconds of silence before the subscription is pinged
_SUBSCRIPTION_DEAD = 10.0  # seconds of silence (pings unanswered) before it is replaced
_LISTENER = metrics.Background.REDIS_LISTENER


class RedisCoordinator:
    def __init__(self, settings: Settings) -> None:
        self._timeout = settings.redis_timeout
        self._prefix = settings.redis_prefix
        bounded: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        # A second client for the subscription: its connection blocks on reads.
        subscriber: dict[str, Any] = {"socket_connect_timeout": settings.redis_timeout}
        sentinel = SentinelUrl.parse(settings.redis_url.get())
        self._sentinels: list[aioredis.Redis] = []  # discovery clients, closed with ours
        if sentinel is None:
            self._client = aioredis.Redis.from_url(settings.redis_url.get(), **bounded)
            self._sub_client = aioredis.Redis.from_url(settings.redis_url.get(), **subscriber)
        else:
            # Every new connection asks the sentinels for the current master, so after a
            # failover the next command reaches the new one (meanwhile: Redis unavailable).
            access: dict[str, Any] = {
                "username": sentinel.username,
                "password": sentinel.password,
                "ssl": sentinel.tls,
            }
            sentinels = Sentinel(  # type: ignore[no-untyped-call]  # untyped in redis-py
                list(sentinel.sentinels),
                sentinel_kwargs={
                    **access,
                    "socket_timeout": settings.redis_timeout,
                    "socket_connect_timeout": settings.redis_timeout,
                    "retry": Retry(NoBackoff(), 0),  # a dead sentinel: ask the next at once
                },
            )
            self._client = sentinels.master_for(
                sentinel.master, db=sentinel.db, **access, **bounded
            )
            self._sub_client = sentinels.master_for(
                sentinel.master, db=sentinel.db, **access, **subscriber
            )
            self._sentinels = list(sentinels.sentinels)
        self._release = self._client.register_script(_RELEASE)
        self._notify_release = self._client.register_script(_NOTIFY_RELEASE)
        self._limiter = AdaptiveRate(settings, self._client, self._bounded, _UNAVAILABLE)
        self._channel = f"{self._prefix}refreshed"
        # "Refreshed" notices of refreshes committing at once go out in one pipeline.
        self._notices: Coalescer[str, None] = Coalescer(
            self._publish_notices, max_items=256, max_inflight=1
        )
        self._invalidate_channel = f"{self._prefix}invalidate"
        self._on_invalidate: list[Callable[[str], None]] = []
        self._waiters: defaultdict[int, set[asyncio.Future[None]]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def budget(self, settings: Settings) -> RedisBudget:
        """The per-portal HubSpot budget, on this coordinator's client and bounds."""
        return RedisBudget(settings, self._client, self._bounded)

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-refreshed-listener")

    async def close(self) -> None:
        await cancel_and_wait(self._listener)
        for client in (self._client, self._sub_client, *self._sentinels):
            await client.aclose()

    async def _bounded(self, operation: metrics.RedisOp, coro: Any) -> Any:
        try:
            # A deadline on this task, not wait_for's task per call (a refresh makes several).
            async with asyncio.timeout(self._timeout):
                return await coro
        except _UNAVAILABLE:
            metrics.backend_failed("redis", operation)
            raise
        except RuntimeError as exc:
            # redis-py on uvloop reports a connection the server dropped as RuntimeError
            # ("unable to perform operation on <TCPTransport closed=True>").
            metrics.backend_failed("redis", operation)
            raise RedisConnectionError(f"connection lost ({exc})") from exc

    # --- locks ----------------------------------------------------------------------------
    async def try_lock(self, name: str, owner: str, ttl_seconds: float) -> bool | None:
        try:
            acquired = await self._bounded(
                "lock",
                self._client.set(
                    f"{self._prefix}lock:{name}", owner, nx=True, px=int(ttl_seconds * 1000)
                ),
            )
        except _UNAVAILABLE:
            return None
        return bool(acquired)

    async def unlock(
        self, name: str, owner: str, *, refreshed: tuple[int, int] | None = None
    ) -> None:
        keys = [f"{self._prefix}lock:{name}"]
        with contextlib.suppress(*_UNAVAILABLE):
            if refreshed is None:
                await self._bounded("unlock", self._release(keys=keys, args=[owner]))
                return
            notice = f"{refreshed[0]}:{refreshed[1]}"
            await self._bounded(
                "unlock", self._notify_release(keys=keys, args=[owner, self._channel, notice])
            )

    # --- notices --------------------------------------------------------------------------
    async def publish_refreshed(self, portal_id: int, version: int) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self._notices.submit([f"{portal_id}:{version}"])

    async def _publish_notices(self, notices: list[str]) -> list[None]:
        if len(notices) == 1:
            await self._bounded("publish", self._client.publish(self._channel, notices[0]))
        else:
            pipe = self._client.pipeline(transaction=False)
            for notice in notices:
                pipe.publish(self._channel, notice)
            await self._bounded("publish", pipe.execute())
        return [None] * len(notices)

    async def publish_invalidation(self, message: str) -> bool:
        try:
            await self._bounded("publish", self._client.publish(self._invalidate_channel, message))
        except _UNAVAILABLE:
            return False
        return True

    def on_invalidation(self, callback: Callable[[str], None]) -> None:
        self._on_invalidate.append(callback)

    async def wait_refreshed(self, portal_id: int, timeout: float) -> bool:
        if not self._subscribed.is_set():
            return False  # no live subscription: the caller polls instead
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[portal_id].add(future)
        try:
            await asyncio.wait_for(future, timeout=timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(portal_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[portal_id]

    def _wake(self, portal_id: int) -> None:
        for future in self._waiters.pop(portal_id, ()):
            if not future.done():
                future.set_result(None)

    async def _listen(self) -> None:
        """Keep one subscription alive; reconnect with a capped backoff. An idle
        subscription is pinged every few seconds: a frozen or partitioned server (or an old
        master after a failover) answers nothing, and waiting on it forever would leave this
        replica deaf to notices without knowing it. Not a ``BackgroundLoop`` (the subscription
        blocks for as long as it lives), but failures are counted and logged as one's:
        ``broker_background_failures_total{loop="redis_listener"}``, ``kind="bug"`` for
        anything but Redis failing. A message that fails to deliver (a malformed notice, a
        raising callback) is counted and dropped alone: the subscription stays, so no notice
        is lost to a resubscribe."""
        delay = 0.1
        while True:
            pubsub = self._sub_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel, self._invalidate_channel)
                self._subscribed.set()
                delay = 0.1
                heard = pinged = time.monotonic()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    now = time.monotonic()
                    if message is not None:
                        heard = now
                        self._deliver_one(message)
                    if now - heard > _SUBSCRIPTION_DEAD:
                        raise RedisConnectionError("the subscription stopped answering")
                    if now - max(heard, pinged) > _SUBSCRIPTION_PING:
                        await asyncio.wait_for(pubsub.ping(), timeout=self._timeout)
                        pinged = now
            except (*_UNAVAILABLE, RuntimeError):  # RuntimeError: see _bounded
                metrics.backend_failed("redis", "subscribe")
                metrics.BACKGROUND_FAILURES.labels(_LISTENER, metrics.FailureKind.BACKEND).inc()
                log.warning("background.step_failed", loop=_LISTENER, code="redis_unavailable")
            except Exception:  # a bug (a callback, a malformed notice): resubscribe
                metrics.BACKGROUND_FAILURES.labels(_LISTENER, metrics.FailureKind.BUG).inc()
                log.exception("background.step_crashed", loop=_LISTENER)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(*_UNAVAILABLE, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            # Waiters registered on the dead subscription fall back to polling.
            for portal_id in list(self._waiters):
                self._wake(portal_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _deliver_one(self, message: dict[str, Any]) -> None:
        try:
            self._deliver(message)
        except Exception:  # a bug (a callback, a malformed notice): this message only
            metrics.BACKGROUND_FAILURES.labels(_LISTENER, metrics.FailureKind.BUG).inc()
            log.exception("background.step_crashed", loop=_LISTENER)

    def _deliver(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return  # a pong
        data = message["data"].decode()
        if message["channel"].decode() == self._invalidate_channel:
            for callback in self._on_invalidate:
                callback(data)
        else:
            portal, _, _version = data.partition(":")
            self._wake(int(portal))

    # --- per-app refresh limiter -------------------------------------------------------------
    async def acquire(self, app: str, *, interactive: bool) -> float:
        return await self._limiter.acquire(app, interactive=interactive)

    async def acquire_many(self, app: str, count: int) -> tuple[int, float]:
        return await self._limiter.acquire_many(app, count)

    async def pause(self, app: str, seconds: float) -> None:
        await self._limiter.pause(app, seconds)

    # --- single-use install state ---------------------------------------------------------
    async def put_state(self, state: str, sealed: str, ttl_seconds: int) -> None:
        try:
            await self._bounded(
                "state_put",
                self._client.set(f"{self._prefix}state:{state}", sealed, ex=ttl_seconds, nx=True),
            )
        except _UNAVAILABLE as exc:
            raise UpstreamError("Redis is unavailable", code="redis_unavailable") from exc

    async def take_state(self, state: str) -> str | None:
        try:
            raw = await self._bounded(
                "state_take", self._client.getdel(f"{self._prefix}state:{state}")
            )
        except _UNAVAILABLE as exc:
            raise UpstreamError("Redis is unavailable", code="redis_unavailable") from exc
        if raw is None:
            return None
        # Bytes that are not UTF-8 cannot be a sealed state: the seal refuses them.
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    async def ping(self) -> None:
        try:
            await self._bounded("ping", self._client.ping())
        except _UNAVAILABLE as exc:
            raise UpstreamError("Redis is unavailable", code="redis_unavailable") from exc
