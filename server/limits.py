"""Token-bucket rate limits kept in Redis, so every worker shares one bucket per client.

The bucket is read, refilled and debited inside one Lua script: Redis runs scripts one at a
time, so a burst of concurrent frames from many connections cannot overshoot the limit.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

# Every bucket named in KEYS (rate and burst for each in ARGV) must hold a token; then one
# is taken from each, else none is, and the reply says how long until all would.
_TAKE = """
local now = tonumber(ARGV[1])
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  levels[i] = tokens
  if tokens < 1 then wait = math.max(wait, (1 - tokens) / rate) end
end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tokens = levels[i]
  if wait == 0 then tokens = tokens - 1 end
  redis.call('HSET', key, 'tokens', tokens, 'at', now)
  redis.call('EXPIRE', key, math.ceil(burst / rate) + 1)
end
return tostring(wait)
"""


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str = "sb:") -> None:
        self._take = redis.register_script(_TAKE)
        self._prefix = prefix

    async def take(self, *buckets: tuple[str, float, int]) -> float:
        """Take a token from every (name, rate per s, burst) bucket and return 0, or take none
        and return the seconds until all of them have one. One round trip."""
        args: list[float | int] = [time.time()]
        for _, rate, burst in buckets:
            args += [rate, burst]
        return float(await self._take(keys=[f"{self._prefix}rl:{name}" for name, _, _ in buckets], args=args))
