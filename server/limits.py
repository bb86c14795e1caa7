"""Token-bucket rate limits kept in Redis, so every worker shares one bucket per client.

The bucket is read, refilled and debited inside one Lua script: Redis runs scripts one at a
time, so a burst of concurrent frames from many connections cannot overshoot the limit.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

_TAKE = """
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
if allowed == 1 then return {1, '0'} end
return {0, tostring((1 - tokens) / rate)}
"""


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str = "sb:") -> None:
        self._take = redis.register_script(_TAKE)
        self._prefix = prefix

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        """0 if a token was taken; else the seconds until one is available."""
        allowed, wait = await self._take(keys=[f"{self._prefix}rl:{bucket}"], args=[time.time(), rate, burst])
        return 0.0 if int(allowed) else float(wait)
