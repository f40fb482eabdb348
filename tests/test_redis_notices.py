"""The holder's last two Redis steps in one round trip (``unlock(..., refreshed=...)``): the
"refreshed" notice reaches a waiting replica and the lock goes, only when its owner releases
it; notices of refreshes committing at once (``publish_refreshed``) all arrive. Real Valkey."""

from __future__ import annotations

import asyncio
import secrets

from broker.adapters.redis import RedisCoordinator
from broker.config import load_settings


def test_unlock_with_a_notice_wakes_waiters_and_releases_only_its_own_lock(
    env: dict[str, str],
) -> None:
    settings = load_settings({**env, "BROKER_REDIS_PREFIX": f"n{secrets.token_hex(3)}:"})

    async def scenario() -> list[object]:
        holder, waiter = RedisCoordinator(settings), RedisCoordinator(settings)
        waiter.start()
        try:
            await asyncio.wait_for(waiter._subscribed.wait(), 10)  # its subscription is up
            assert await holder.try_lock("portal:7", "me", 30) is True
            woken = asyncio.create_task(waiter.wait_refreshed(7, 5.0))
            await asyncio.sleep(0.05)
            # Someone else's release: the notice goes, the lock stays.
            await holder.unlock("portal:7", "not-me", refreshed=(7, 2))
            first = await woken
            still_held = await holder.try_lock("portal:7", "other", 30)
            woken = asyncio.create_task(waiter.wait_refreshed(7, 5.0))
            await asyncio.sleep(0.05)
            await holder.unlock("portal:7", "me", refreshed=(7, 3))
            second = await woken
            free = await holder.try_lock("portal:7", "other", 30)
            # Concurrent notices (one pipeline when they coalesce): every waiter wakes.
            waits = [asyncio.create_task(waiter.wait_refreshed(p, 5.0)) for p in range(20, 40)]
            await asyncio.sleep(0.05)
            await asyncio.gather(*(holder.publish_refreshed(p, 2) for p in range(20, 40)))
            all_woken = all(await asyncio.gather(*waits))
        finally:
            await holder.close()
            await waiter.close()
        return [first, still_held, second, free, all_woken]

    assert asyncio.run(scenario()) == [True, False, True, True, True]
