"""Token-bucket rate limits kept in Redis, so every worker shares one bucket per client.

The bucket is read, refilled and debited inside one Lua script: Redis runs scripts one at a
time, so a burst of concurrent frames from many connections cannot overshoot the limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from server.settings import Settings

# Every bucket named in `keys` (rate and burst for each in `argv` after `now`) must hold a
# token; then one is taken from each, else none is, and the reply says how long until all
# would. A Lua function so other scripts can take tokens in the same atomic step (a chat
# message is rate-limited inside the script that begins its turn: one round trip, not two).
TAKE_FUNCTION = """
local function take_tokens(keys, argv)
  local now = tonumber(argv[1])
  local levels, wait = {}, 0
  for i, key in ipairs(keys) do
    local rate, burst = tonumber(argv[2 * i]), tonumber(argv[2 * i + 1])
    local state = redis.call('HMGET', key, 'tokens', 'at')
    local tokens = tonumber(state[1]) or burst
    local at = tonumber(state[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
    levels[i] = tokens
    if tokens < 1 then wait = math.max(wait, (1 - tokens) / rate) end
  end
  for i, key in ipairs(keys) do
    local rate, burst = tonumber(argv[2 * i]), tonumber(argv[2 * i + 1])
    local tokens = levels[i]
    if wait == 0 then tokens = tokens - 1 end
    redis.call('HSET', key, 'tokens', tokens, 'at', now)
    redis.call('EXPIRE', key, math.ceil(burst / rate) + 1)
  end
  return wait
end
"""
_TAKE = TAKE_FUNCTION + "\nreturn tostring(take_tokens(KEYS, ARGV))\n"
_GUARD_FUNCTION = TAKE_FUNCTION + "\nlocal guard = take_tokens\n"


@dataclass(frozen=True, slots=True)
class Guard:
    """A token take to run inside another Lua script: `function` defines `take_tokens(keys, argv)`."""

    function: str
    keys: list[str]
    args: list[float | int]


def feedback_bucket(client: str, settings: Settings) -> tuple[str, float, int]:
    """The per-address feedback bucket, shared by the websocket's `rate` and `POST /v1/feedback`."""
    return (f"feedback:{client}", settings.feedback_per_client_per_minute / 60, settings.feedback_burst)


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str = "sb:") -> None:
        self._take = redis.register_script(_TAKE)
        self._prefix = prefix

    async def take(self, *buckets: tuple[str, float, int]) -> float:
        """Take a token from every (name, rate per s, burst) bucket and return 0, or take none
        and return the seconds until all of them have one. One round trip."""
        guard = self.guard(*buckets)
        return float(await self._take(keys=guard.keys, args=guard.args))

    def guard(self, *buckets: tuple[str, float, int]) -> Guard:
        """The same take, for a script that runs it first (see ConversationStore.begin_turn)."""
        args: list[float | int] = [time.time()]
        for _, rate, burst in buckets:
            args += [rate, burst]
        return Guard(_GUARD_FUNCTION, [f"{self._prefix}rl:{name}" for name, _, _ in buckets], args)
