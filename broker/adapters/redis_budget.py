"""The per-portal HubSpot budget in Redis (implements ``BudgetStore``).

Per portal: a sorted set of the requests of the current window (a sliding log: member a
sequence number, score the Redis clock in ms), a counter per UTC day, and a hash holding
the sequence, a limit lowered by HubSpot's headers (for an hour) and a pause after a 429.
Each call is one Lua script: atomic across replicas, one round trip, the server's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from broker.config import Settings
from broker.core.ports.budget import BudgetState, Limits, Observed
from broker.errors import UpstreamError

# KEYS: log, day counter, state hash. ARGV: limit, window ms, daily limit, units, force.
# Returns {wait ms, used, limit, used today[, the last unit's member]}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, daily, units = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[3], 'max', 'until')
local limit = math.min(tonumber(ARGV[1]), tonumber(s[1]) or tonumber(ARGV[1]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
local today = tonumber(redis.call('GET', KEYS[2]) or '0')
if units == 0 then return {0, used, limit, today} end
if ARGV[5] ~= '1' then
  local paused = (tonumber(s[2]) or 0) - now
  if paused > 0 then return {paused, used, limit, today} end
  if daily > 0 and today + units > daily then
    return {86400000 - now % 86400000, used, limit, today}
  end
  if used + units > limit then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local wait = window
    if oldest[2] then wait = math.max(1, tonumber(oldest[2]) + window - now) end
    return {wait, used, limit, today}
  end
end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', units)
for i = 1, units do redis.call('ZADD', KEYS[1], now, seq - i) end
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[3], 3600000)
today = redis.call('INCRBY', KEYS[2], units)
redis.call('PEXPIRE', KEYS[2], 86400000 - now % 86400000 + 3600000)
return {0, used + units, limit, today, seq}
"""
# KEYS: log, day counter, state hash. ARGV: limit, window ms, remaining, max, daily
# remaining, daily max (-1: not sent), then the units' members (0: none). The units count
# from now; then what HubSpot saw and the log did not is counted.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 7, #ARGV do
  if ARGV[i] ~= '0' then redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i] - 1) end
end
local remaining, max = tonumber(ARGV[3]), tonumber(ARGV[4])
if max > 0 and max < limit then
  limit = max
  redis.call('HSET', KEYS[3], 'max', max)
  redis.call('PEXPIRE', KEYS[3], 3600000)
end
if remaining >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local missing = limit - remaining - redis.call('ZCARD', KEYS[1])
  if missing > 0 then
    local seq = redis.call('HINCRBY', KEYS[3], 'seq', missing)
    for i = 1, missing do redis.call('ZADD', KEYS[1], now, seq - i) end
    redis.call('PEXPIRE', KEYS[1], window)
  end
end
local dr, dm = tonumber(ARGV[5]), tonumber(ARGV[6])
if dr >= 0 and dm > 0 then
  local seen = dm - dr
  if seen > tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('SET', KEYS[2], seen, 'PX', 86400000 - now % 86400000 + 3600000)
  end
end
return 1
"""
# KEYS: state hash. ARGV: pause ms.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
if untl > (tonumber(redis.call('HGET', KEYS[1], 'until')) or 0) then
  redis.call('HSET', KEYS[1], 'until', untl)
  redis.call('PEXPIRE', KEYS[1], 3600000)
end
return 1
"""


class RedisBudget:
    def __init__(self, settings: Settings, client: aioredis.Redis, bounded: Any) -> None:
        """``bounded``: the coordinator's bounded call (timeout, counted failures), which
        raises :class:`UpstreamError` here when Redis does not answer."""
        self._prefix = f"{settings.redis_prefix}budget:"
        self._bounded = bounded
        self._take = client.register_script(_TAKE)
        self._settle = client.register_script(_SETTLE)
        self._pause = client.register_script(_PAUSE)

    def _keys(self, portal: str) -> list[str]:
        base = self._prefix + portal
        return [f"{base}:log", f"{base}:day", f"{base}:state"]

    async def _call(self, operation: str, coro: Any) -> Any:
        try:
            return await self._bounded(operation, coro)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError("Redis is unavailable", code="redis_unavailable") from exc

    async def take(self, portal: str, limits: Limits, units: int, *, force: bool) -> BudgetState:
        args = [limits.per_window, limits.window_ms, limits.per_day, units, int(force)]
        wait_ms, used, limit, today, *unit = await self._call(
            "budget", self._take(keys=self._keys(portal), args=args)
        )
        taken = int(unit[0]) if unit else 0
        return BudgetState(
            int(wait_ms) / 1000, int(used), int(limit), int(today), limits.per_day, taken
        )

    async def settle(
        self, portal: str, limits: Limits, units: Sequence[int], seen: Observed | None
    ) -> None:
        def n(value: int | None) -> int:
            return -1 if value is None else value

        seen = seen or Observed()
        args = [limits.per_window, limits.window_ms, n(seen.remaining), n(seen.maximum)]
        args += [n(seen.daily_remaining), n(seen.daily), *units]
        await self._call("budget", self._settle(keys=self._keys(portal), args=args))

    async def pause(self, portal: str, seconds: float) -> None:
        args = [max(1, int(seconds * 1000))]
        await self._call("budget", self._pause(keys=self._keys(portal)[2:], args=args))
