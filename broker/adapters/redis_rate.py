"""The per-app refresh rate, shared by every replica through Redis, and adaptive: AIMD.

One hash per app holds a token bucket and its rate. The rate starts at
``refresh_rate_per_app`` and stays within ``[refresh_rate_min, refresh_rate_max]``:

* **additive increase**: while demand exceeds the rate (an ``acquire`` is refused after a
  window of at least a second in which the slots granted reached :data:`UTILIZATION` of the
  rate), the rate grows by ``refresh_rate_step``: at most once a second across all replicas,
  and not within :data:`HOLD_MS` of a decrease;
* **multiplicative decrease**: a 429 from HubSpot (``pause``) halves it, at most once per
  :data:`HOLD_MS` (the other calls that were in flight answer 429 too: one cut, not ten), and
  pauses the app's proactive refreshes as before (``Retry-After`` honoured by the caller).

Each ``acquire`` and ``pause`` is one Lua script: one round trip, atomic across replicas, on
the Redis server's clock. An app's hash outlives :data:`IDLE_MS` of silence, then the rate
starts over. While Redis is unreachable each replica refreshes alone, at a quarter of the
last rate it saw (a 429 then halves that local rate).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from broker import metrics
from broker.config import Settings

log = structlog.get_logger(__name__)

#: Milliseconds after a decrease during which the rate neither halves again nor grows.
HOLD_MS = 2000
#: Share of the rate a window's granted slots must reach before a refusal grows the rate.
UTILIZATION = 0.9
#: Seconds of the rate a full bucket holds: HubSpot counts calls in rolling windows, and a
#: full second of burst on top of the rate doubles what one window sees.
BURST_SECONDS = 0.25
#: Milliseconds without any acquire after which an app's rate and bucket are forgotten.
IDLE_MS = 3_600_000
#: Seconds between two "raised" log lines for one app on one replica (decreases always log).
LOG_EVERY = 30.0

# The rate and bucket of one app. KEYS: bucket hash, pause key. ARGV: start rate, min, max,
# step, interactive (1/0), count (proactive: slots asked for at once, one claim's portals).
# Returns {wait ms (0: all granted), rate, raised (1/0), granted}. Interactive callers
# always pass and may drive the bucket negative (down to one second of the rate), which
# makes proactive refreshes wait longer. Demand exceeds the rate when an acquire is refused
# after a window (>= 1 s) in which the slots granted used at least UTILIZATION of the rate:
# then the rate grows. A refusal after a burst in an otherwise quieter window does not count.
_ACQUIRE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lo, hi, step = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local interactive = ARGV[5] == '1'
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate', 'win', 'used', 'cut')
local rate = math.min(hi, math.max(lo, tonumber(s[3]) or tonumber(ARGV[1])))
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 and not interactive then return {{paused, tostring(rate), 0, 0}} end
local burst = math.max(1, rate * {BURST_SECONDS})
local tokens = tonumber(s[1]) or burst
local win, used, cut = tonumber(s[4]) or now, tonumber(s[5]) or 0, tonumber(s[6]) or 0
tokens = math.min(burst, tokens + (now - (tonumber(s[2]) or now)) * rate / 1000)
local wait, raised, granted = 0, 0, 0
local count = math.max(1, tonumber(ARGV[6]) or 1)
if interactive then
  tokens, granted = math.max(tokens - 1, -math.max(1, rate)), 1
elseif tokens >= 1 then
  granted = math.min(count, math.floor(tokens))
  tokens = tokens - granted
end
used = used + granted
if granted < count then
  wait = math.ceil((1 - tokens) * 1000 / rate)
  if now - win >= 1000 then
    if used >= {UTILIZATION} * rate * (now - win) / 1000 and rate < hi
       and now - cut >= {HOLD_MS} then
      rate, raised = math.min(hi, rate + step), 1
    end
    win, used = now, 0
  end
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now, 'rate', rate, 'win', win,
           'used', used, 'cut', cut)
redis.call('PEXPIRE', KEYS[1], {IDLE_MS})
return {{wait, tostring(rate), raised, granted}}
"""
# HubSpot said 429. KEYS: bucket hash, pause key. ARGV: pause ms, start rate, min, max.
# Returns {rate before, rate after, halved (1/0)}. The bucket keeps no credit past the cut.
_DECREASE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lo, hi = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate', 'cut')
local before = math.min(hi, math.max(lo, tonumber(s[3]) or tonumber(ARGV[2])))
local rate, halved = before, 0
if now - (tonumber(s[4]) or 0) >= {HOLD_MS} then
  rate, halved = math.max(lo, before / 2), 1
  local tokens = tonumber(s[1]) or 0
  tokens = math.min(tokens + (now - (tonumber(s[2]) or now)) * before / 1000, 0)
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now, 'rate', rate, 'cut', now,
             'win', now, 'used', 0)
  redis.call('PEXPIRE', KEYS[1], {IDLE_MS})
end
if tonumber(ARGV[1]) > redis.call('PTTL', KEYS[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
end
return {{tostring(before), tostring(rate), halved}}
"""

Bounded = Callable[[metrics.RedisOp, Awaitable[Any]], Awaitable[Any]]


class AdaptiveRate:
    """``RateLimiter`` for :class:`broker.adapters.redis.RedisCoordinator` (which owns the
    client and the bounded call that counts and maps Redis failures)."""

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        bounded: Bounded,
        unavailable: tuple[type[BaseException], ...],
    ) -> None:
        self._prefix = settings.redis_prefix
        self._start = settings.refresh_rate_per_app
        self._min = settings.refresh_rate_min
        self._max = settings.refresh_rate_max
        self._step = settings.refresh_rate_step
        self._bounded = bounded
        self._unavailable = unavailable
        self._acquire = client.register_script(_ACQUIRE)
        self._decrease = client.register_script(_DECREASE)
        self._seen: dict[str, float] = {}  # app -> last shared rate this replica saw
        self._logged: dict[str, tuple[float, float]] = {}  # app -> (when, rate) last logged
        self._gauges: dict[str, Any] = {}
        # Used only while Redis is unreachable: app -> (tokens, stamp), app -> paused until.
        self._local: dict[str, tuple[float, float]] = {}
        self._local_pause: dict[str, float] = {}

    def _keys(self, app: str) -> list[str]:
        return [f"{self._prefix}rl:{app}", f"{self._prefix}rl-pause:{app}"]

    def rate(self, app: str) -> float:
        """The last shared rate seen for ``app`` (the starting rate before any)."""
        return self._seen.get(app, self._start)

    async def acquire(self, app: str, *, interactive: bool) -> float:
        if interactive:
            with contextlib.suppress(*self._unavailable):
                await self._ask(app, 1, interactive=True)
            return 0.0
        _, wait = await self.acquire_many(app, 1)
        return wait

    async def acquire_many(self, app: str, count: int) -> tuple[int, float]:
        try:
            return await self._ask(app, count, interactive=False)
        except self._unavailable:
            granted, wait = 0, 0.0
            while granted < count and (wait := self._acquire_locally(app)) == 0:
                granted += 1
            return granted, wait

    async def _ask(self, app: str, count: int, *, interactive: bool) -> tuple[int, float]:
        """One round trip: (slots granted, seconds to wait for the next when not all)."""
        wait_ms, rate, raised, granted = await self._bounded(
            "limit",
            self._acquire(
                keys=self._keys(app),
                args=[self._start, self._min, self._max, self._step, int(interactive), count],
            ),
        )
        self._saw(app, float(rate), raised=bool(raised))
        return int(granted), float(wait_ms) / 1000

    async def pause(self, app: str, seconds: float) -> None:
        try:
            before, rate, halved = await self._bounded(
                "pause",
                self._decrease(
                    keys=self._keys(app),
                    args=[max(1, int(seconds * 1000)), self._start, self._min, self._max],
                ),
            )
        except self._unavailable:
            self._pause_locally(app, seconds)
            return
        self._saw(app, float(rate))
        if halved:
            when, _ = self._logged.get(app, (0.0, self._start))
            self._logged[app] = (when, float(rate))  # the next "raised" counts from here
            log.info(
                "refresh_rate.halved",
                app=app,
                rate=round(float(rate), 2),
                before=round(float(before), 2),
                pause_seconds=round(seconds, 2),
            )

    def _saw(self, app: str, rate: float, *, raised: bool = False) -> None:
        self._seen[app] = rate
        gauge = self._gauges.get(app)
        if gauge is None and len(self._gauges) < metrics.REFRESH_RATE_MAX_APPS:
            gauge = self._gauges[app] = metrics.REFRESH_RATE.labels(app)
        if gauge is not None:
            gauge.set(rate)
        if raised:
            now = time.monotonic()
            when, logged = self._logged.get(app, (0.0, self._start))
            if now - when >= LOG_EVERY or rate >= self._max:
                if logged != rate:
                    log.info("refresh_rate.raised", app=app, rate=round(rate, 2), since=logged)
                self._logged[app] = (now, rate)

    def _acquire_locally(self, app: str) -> float:
        now = time.monotonic()
        paused = self._local_pause.get(app, 0.0) - now
        if paused > 0:
            return paused
        rate = self.rate(app) / 4
        tokens, stamp = self._local.get(app, (1.0, now))
        tokens = min(1.0, tokens + (now - stamp) * rate)
        if tokens >= 1:
            self._local[app] = (tokens - 1, now)
            return 0.0
        self._local[app] = (tokens, now)
        return (1 - tokens) / rate

    def _pause_locally(self, app: str, seconds: float) -> None:
        now = time.monotonic()
        until = self._local_pause.get(app, 0.0)
        if until <= now:  # one cut per pause, as the shared HOLD_MS does
            self._seen[app] = max(self._min, self.rate(app) / 2)
        self._local_pause[app] = max(until, now + seconds)
