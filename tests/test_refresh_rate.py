"""The adaptive per-app refresh rate on real Valkey (broker.adapters.redis_rate): it grows
while demand exceeds it, halves on a 429, stays within the operator's bounds, is one rate for
every replica, and still throttles while Redis is unreachable. Against the simulator's token
endpoint limit it settles near that limit without a storm of 429s."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack

import httpx
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from broker.adapters.redis import RedisCoordinator
from broker.app import create_app
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator
from tests.helpers import install_link, register, serve_app


def _settings(env: dict[str, str], **rates: str) -> Settings:
    return load_settings(
        {**env, **{f"BROKER_REFRESH_RATE_{k.upper()}": v for k, v in rates.items()}}
    )


async def _shared_rate(settings: Settings, app: str) -> float | None:
    client = aioredis.Redis.from_url(settings.redis_url.get())
    try:
        raw = await client.hget(f"{settings.redis_prefix}rl:{app}", "rate")
    finally:
        await client.aclose()
    return None if raw is None else float(raw)


async def _saturate(acquire: Callable[[], Awaitable[float]], seconds: float) -> int:
    """Ask for slots as fast as they come (more demand than any rate lets through)."""
    granted, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        wait = await acquire()
        if wait == 0:
            granted += 1
        else:
            await asyncio.sleep(min(wait, 0.05))
    return granted


def test_rate_grows_under_saturating_demand_within_the_maximum(env: dict[str, str]) -> None:
    settings = _settings(env, per_app="10", min="2", max="22", step="5")
    app = f"a{secrets.token_hex(3)}"

    async def scenario() -> tuple[float | None, int, float | None]:
        replica = RedisCoordinator(settings)
        try:
            assert await replica.acquire(app, interactive=False) == 0
            assert await _shared_rate(settings, app) == 10  # starts at REFRESH_RATE_PER_APP
            granted = await _saturate(lambda: replica.acquire(app, interactive=False), 4.5)
            return await _shared_rate(settings, app), granted, _gauge(app)
        finally:
            await replica.close()

    rate, granted, gauge = asyncio.run(scenario())
    # +5 per second of unmet demand from 10: 15, 20, then capped at the maximum, 22.
    assert rate == 22
    assert gauge == 22  # broker_refresh_rate{app=...}, as this replica last saw it
    # More slots than the starting rate alone allows (10/s, plus a second of it to spare).
    assert granted > 10 * 4.5 + 10


def test_a_429_halves_the_rate_once_per_hold_never_below_the_minimum(
    env: dict[str, str],
) -> None:
    settings = _settings(env, per_app="12", min="4", max="50", step="5")
    app = f"a{secrets.token_hex(3)}"

    async def scenario() -> list[float | None]:
        replica = RedisCoordinator(settings)
        seen = []
        try:
            await replica.acquire(app, interactive=False)
            await replica.pause(app, 0.3)  # HubSpot said 429: 12 -> 6
            seen.append(await _shared_rate(settings, app))
            await replica.pause(app, 0.3)  # the other calls in flight: no second cut
            seen.append(await _shared_rate(settings, app))
            # Paused: proactive refreshes wait, interactive ones pass.
            assert await replica.acquire(app, interactive=False) > 0
            assert await replica.acquire(app, interactive=True) == 0
            await asyncio.sleep(2.1)  # past the hold: the next 429 cuts again, to the floor
            await replica.pause(app, 0.1)
            seen.append(await _shared_rate(settings, app))
        finally:
            await replica.close()
        return seen

    assert asyncio.run(scenario()) == [6, 6, 4]


def test_replicas_share_one_rate(env: dict[str, str]) -> None:
    settings = _settings(env, per_app="10", min="1", max="100", step="10")
    app = f"a{secrets.token_hex(3)}"

    async def scenario() -> tuple[float, float, float | None]:
        first, second = RedisCoordinator(settings), RedisCoordinator(settings)
        try:
            # Both replicas' refreshers draw from one bucket: together they saturate it.
            await asyncio.gather(
                _saturate(lambda: first.acquire(app, interactive=False), 3.2),
                _saturate(lambda: second.acquire(app, interactive=False), 3.2),
            )
            grown = await _shared_rate(settings, app)
            assert grown is not None
            assert grown >= 30
            await second.acquire(app, interactive=True)
            seen_by_second = _gauge(app)
            await first.pause(app, 0.1)  # a 429 on one replica slows every replica
            await second.acquire(app, interactive=True)
            return grown, seen_by_second or 0.0, _gauge(app)
        finally:
            await first.close()
            await second.close()

    grown, seen, after = asyncio.run(scenario())
    assert seen == grown
    assert after == grown / 2


def test_without_redis_each_replica_throttles_alone_at_a_quarter(env: dict[str, str]) -> None:
    settings = load_settings(
        {**env, "BROKER_REDIS_URL": "redis://127.0.0.1:9/0", "BROKER_REFRESH_RATE_PER_APP": "8"}
    )

    async def scenario() -> list[float]:
        replica = RedisCoordinator(settings)
        try:
            waits = [await replica.acquire("demo", interactive=False) for _ in range(2)]
            waits.append(await replica.acquire("demo", interactive=True))
            await replica.pause("demo", 5.0)  # a 429 while Redis is down: local pause
            waits.append(await replica.acquire("demo", interactive=False))
            return waits
        finally:
            await replica.close()

    first, second, interactive, paused = asyncio.run(scenario())
    assert first == 0
    assert 0.4 < second <= 0.5  # 8/s shared -> 2/s alone: the next slot in half a second
    assert interactive == 0
    assert 4.0 < paused <= 5.0


def _gauge(app: str) -> float | None:
    return REGISTRY.get_sample_value("broker_refresh_rate", {"app": app})


def test_the_rate_settles_near_the_token_endpoints_limit_without_a_429_storm(
    env: dict[str, str], sim: Simulator
) -> None:
    """Two replicas refresh 40 portals whose tokens live 3 s (about 20 refreshes/s due)
    against a token endpoint answering 8 calls/s per app: the rate backs off to the limit's
    neighbourhood and the 429s stay a small share of the calls."""
    settings = load_settings(
        {
            **env,
            "BROKER_REFRESHER_ENABLED": "true",
            "BROKER_REFRESHER_INTERVAL": "0.2",
            "BROKER_REFRESH_RATE_PER_APP": "20",
            "BROKER_REFRESH_RATE_MIN": "1",
            "BROKER_REFRESH_RATE_MAX": "40",
            "BROKER_REFRESH_RATE_STEP": "2",
        }
    )
    hubs = list(range(8_900_001, 8_900_041))
    with ExitStack() as stack:
        urls = [stack.enter_context(serve_app(create_app(settings))) for _ in range(2)]
        register(settings, sim, f"{urls[0]}/oauth/callback", slug="demo")
        link = install_link(settings, "demo")
        sim.configure(access_token_ttl=3)
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            for hub in hubs:
                sim.add_portal(hub)
                sim.configure(consent="auto", consent_hub_id=hub)
                assert browser.get(link).status_code == 200
        sim.configure(token_rate_limit=8)  # installs done: now refreshes meet the limit
        time.sleep(2)
        before = sim.counters()
        rates = []
        for _ in range(24):
            time.sleep(0.5)
            rates.append(asyncio.run(_shared_rate(settings, "demo")) or 0.0)
        after = sim.counters()
    limited = after["token.rate_limited"] - before["token.rate_limited"]
    calls = after["token.refresh_token"] - before["token.refresh_token"]
    answered = calls - limited
    late = rates[len(rates) // 2 :]
    detail = f"rates {rates}, {calls} calls, {limited} answered 429"
    assert min(rates) < 20, detail  # it backed off from the starting rate
    assert sum(late) / len(late) <= 2 * 8, detail  # and stays near the limit
    assert answered >= 8 * 12 * 0.4, detail  # while using a fair share of it
    assert limited <= 0.3 * answered, detail  # 429s: a small share, not a storm


def test_a_claim_asks_for_its_slots_in_one_call_and_gets_what_the_bucket_holds(
    env: dict[str, str],
) -> None:
    # 40/s: a full bucket holds a quarter second of it, 10 slots.
    settings = _settings(env, per_app="40", min="2", max="40", step="5")
    app = f"a{secrets.token_hex(3)}"

    async def scenario() -> tuple[tuple[int, float], tuple[int, float], tuple[int, float]]:
        replica = RedisCoordinator(settings)
        try:
            first = await replica.acquire_many(app, 16)  # 10 of 16: the rest must wait
            empty = await replica.acquire_many(app, 4)  # nothing left right now
            await asyncio.sleep(0.2)  # about 8 slots come back
            later = await replica.acquire_many(app, 3)
        finally:
            await replica.close()
        return first, empty, later

    (granted, wait), (none, wait_empty), (refilled, wait_later) = asyncio.run(scenario())
    assert granted == 10
    assert 0 < wait <= 0.025  # the next slot, at 40/s
    assert none == 0
    assert wait_empty > 0
    assert (refilled, wait_later) == (3, 0)
