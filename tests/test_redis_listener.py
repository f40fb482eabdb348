"""The Redis listener on a real Valkey: a notice whose handling raises is counted as a bug of
the ``redis_listener`` loop and logged, and the listener goes on delivering on the same
subscription (it used to end, leaving the replica deaf to notices until a restart)."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from broker.adapters.redis import RedisCoordinator
from broker.config import Settings


def _bugs() -> float:
    labels = {"loop": "redis_listener", "kind": "bug"}
    return REGISTRY.get_sample_value("broker_background_failures_total", labels) or 0.0


def _listening(settings: Settings) -> tuple[RedisCoordinator, list[str]]:
    """A started coordinator whose invalidation handler raises on ``poison`` and records
    every other message it hears."""
    coordinator = RedisCoordinator(settings)
    heard: list[str] = []

    def handle(message: str) -> None:
        if message == "poison":
            raise ValueError("a handler bug")
        heard.append(message)

    coordinator.on_invalidation(handle)
    coordinator.start()
    return coordinator, heard


async def test_a_failing_notice_is_counted_and_the_listener_goes_on(settings: Settings) -> None:
    coordinator, heard = _listening(settings)
    try:
        before = _bugs()
        deadline = asyncio.get_running_loop().time() + 10
        # Published until heard: the subscription may not be up yet, or resubscribing.
        while _bugs() == before:
            assert asyncio.get_running_loop().time() < deadline, "the poison was never handled"
            assert await coordinator.publish_invalidation("poison")
            await asyncio.sleep(0.2)
        while "after" not in heard:
            assert asyncio.get_running_loop().time() < deadline, "the listener stopped"
            assert await coordinator.publish_invalidation("after")
            await asyncio.sleep(0.2)
    finally:
        await coordinator.close()


async def test_a_notice_right_behind_a_failing_one_is_not_lost(settings: Settings) -> None:
    """The failing notice costs nothing but itself: the one published right behind it is
    heard on the same subscription (a resubscribe would drop it)."""
    coordinator, heard = _listening(settings)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while "ready" not in heard:  # the subscription is up
            assert asyncio.get_running_loop().time() < deadline, "never subscribed"
            assert await coordinator.publish_invalidation("ready")
            await asyncio.sleep(0.1)
        before = _bugs()
        assert await coordinator.publish_invalidation("poison")
        assert await coordinator.publish_invalidation("right-behind")
        while "right-behind" not in heard:
            assert asyncio.get_running_loop().time() < deadline, "the notice behind was lost"
            await asyncio.sleep(0.05)
        assert _bugs() == before + 1
    finally:
        await coordinator.close()
