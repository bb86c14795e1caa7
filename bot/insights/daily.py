"""Per-day figures for the support lead, written as answers, ratings and handoffs are recorded.

Every figure of a day is about the conversations that *started* that day (UTC), so a rating
given on Tuesday to Monday's answer changes Monday. Key layout (docs/protocol.md):

    {p}insights:day:{YYYY-MM-DD}        hash   conversations, answered, unresolved, answers, path:{path},
                                               rating:up, rating:down, handoff:{reason}, handed_off
    {p}insights:day:{YYYY-MM-DD}:ttft   list   time to first text of each answer, seconds
    {p}insights:day:{YYYY-MM-DD}:gaps   zset   "{kind}|{conversation}|{message or time}" scored by time:
                                               the questions a writer should look at (bot/insights/gaps.py)

and on each conversation's own hash: `ins` (its start day; conversations without it predate
these figures and are counted by `backfill`), `ins:seen`, `ins:answered`, `ins:handoff`,
`ins:downs` (answers whose latest rating is down). A conversation is *unresolved* when it
was answered and either handed off or has an answer rated down; the day keeps the count of
those, changed by one script whenever a conversation crosses that line, so reading a month
of figures is one pipeline of ~60 commands whatever the traffic.

No visitor text is stored here: the day's counters are anonymous and the gap references
point into the conversation, whose messages expire (and are erased) as conversations do.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

# One event of one conversation, in one script: the day's counters, the conversation's flags,
# and the change of its unresolved state, so concurrent workers cannot count a conversation twice.
_RECORD = """
local conv, day = KEYS[1], KEYS[2]
if not redis.call('HGET', conv, 'ins') then return 0 end
local function unresolved()
  local f = redis.call('HMGET', conv, 'ins:answered', 'ins:handoff', 'ins:downs')
  if not f[1] then return 0 end
  if f[2] or tonumber(f[3] or '0') > 0 then return 1 end
  return 0
end
local before = unresolved()
if redis.call('HSETNX', conv, 'ins:seen', '1') == 1 then redis.call('HINCRBY', day, 'conversations', 1) end
local path = ARGV[1]
if path ~= '' then
  redis.call('HINCRBY', day, 'answers', 1)
  redis.call('HINCRBY', day, 'path:' .. path, 1)
  if ARGV[2] ~= '' then
    redis.call('RPUSH', KEYS[3], ARGV[2])
    redis.call('EXPIRE', KEYS[3], ARGV[9])
  end
  if path ~= 'cancelled' and path ~= 'small_talk' and redis.call('HSETNX', conv, 'ins:answered', '1') == 1 then
    redis.call('HINCRBY', day, 'answered', 1)
  end
end
if ARGV[3] ~= '' then
  redis.call('HINCRBY', day, 'handoff:' .. ARGV[3], 1)
  if redis.call('HSETNX', conv, 'ins:handoff', '1') == 1 then redis.call('HINCRBY', day, 'handed_off', 1) end
end
if ARGV[4] ~= ARGV[5] then
  if ARGV[4] ~= '' then redis.call('HINCRBY', day, 'rating:' .. ARGV[4], -1) end
  if ARGV[5] ~= '' then redis.call('HINCRBY', day, 'rating:' .. ARGV[5], 1) end
  local delta = (ARGV[5] == 'down' and 1 or 0) - (ARGV[4] == 'down' and 1 or 0)
  if delta ~= 0 then redis.call('HINCRBY', conv, 'ins:downs', delta) end
end
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[10])
end
if ARGV[7] ~= '' then redis.call('ZREM', KEYS[4], ARGV[7]) end
local after = unresolved()
if after ~= before then redis.call('HINCRBY', day, 'unresolved', after - before) end
redis.call('EXPIRE', day, ARGV[9])
return 1
"""

GAP_KINDS = ("not_sure", "down", "handoff")
# Reasons an answer offered a person (bot/assistant.py's handoff_reason) and two that come
# from status changes: the visitor asked for a person, an agent took over unasked.
REQUESTED = "requested"
AGENT_TAKEOVER = "agent_takeover"


def day_of(timestamp: float) -> str:
    """The UTC day of a Unix time, as YYYY-MM-DD."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def time_to_first_text(message: dict[str, Any]) -> float | None:
    """Seconds from the visitor's message to the first text they saw (assistant plus server time)."""
    timings = message.get("timings") or {}
    first = timings.get("time_to_first_token_s")
    if first is None:
        return None
    return float(first) + float(timings.get("server_overhead_s") or 0.0)


class InsightsLog:
    """Writes the per-day figures; `ConversationStore` calls it as it records each event."""

    def __init__(self, redis: Any, prefix: str, *, retention_s: int, gap_ttl_s: int) -> None:
        self._redis = redis
        self._p = prefix
        self._retention_s = retention_s
        self._gap_ttl_s = gap_ttl_s
        self._record = redis.register_script(_RECORD)

    def day_key(self, day: str, part: str = "") -> str:
        return f"{self._p}insights:day:{day}{':' + part if part else ''}"

    async def record(
        self,
        conversation_key: str,
        *,
        path: str = "",
        ttft_s: float | None = None,
        handoff_reason: str = "",
        rating: tuple[str, str] = ("", ""),
        gap_add: str = "",
        gap_remove: str = "",
        when: float | None = None,
    ) -> bool:
        """Count one event of a conversation on its start day; False when the conversation
        predates these figures (backfill counts it) or is gone.

        Shielded: the event is stored by the time this runs, and a visitor who closes the
        widget at that moment (which cancels the answer's task) must not leave it uncounted."""
        args = (path, ttft_s, handoff_reason, rating, gap_add, gap_remove, time.time() if when is None else when)
        return await asyncio.shield(self._record_now(conversation_key, *args))

    async def _record_now(
        self,
        conversation_key: str,
        path: str,
        ttft_s: float | None,
        handoff_reason: str,
        rating: tuple[str, str],
        gap_add: str,
        gap_remove: str,
        when: float,
    ) -> bool:
        day = await self._redis.hget(conversation_key, "ins")
        if day is None:
            return False
        day = day.decode()
        keys = [conversation_key, self.day_key(day), self.day_key(day, "ttft"), self.day_key(day, "gaps")]
        args: list[str | int | float] = [
            path,
            "" if ttft_s is None else round(ttft_s, 6),
            handoff_reason,
            rating[0],
            rating[1],
            gap_add,
            gap_remove,
            when,
            self._retention_s,
            self._gap_ttl_s,
        ]
        return bool(await self._record(keys=keys, args=args))

    async def record_answer(self, conversation_key: str, conversation_id: str, message: dict[str, Any]) -> None:
        """A bot answer: its path, time to first text, the person it offered, a "not sure" gap."""
        path = str(message.get("path", ""))
        reason = str(message.get("handoff_reason") or "") if message.get("handoff") else ""
        if path == "human_requested":
            reason = ""  # counted once, as the status change that puts it in the queue
        gap = f"not_sure|{conversation_id}|{message.get('id', '')}" if path == "not_sure" else ""
        await self.record(conversation_key, path=path, ttft_s=time_to_first_text(message), handoff_reason=reason, gap_add=gap)

    async def record_rating(self, conversation_key: str, conversation_id: str, message_id: str, old: str, new: str) -> None:
        """An answer's latest rating changed from `old` ('' for none) to `new`."""
        member = f"down|{conversation_id}|{message_id}"
        await self.record(
            conversation_key,
            rating=(old, new),
            gap_add=member if new == "down" and old != "down" else "",
            gap_remove=member if old == "down" and new != "down" else "",
        )

    async def record_handoff(self, conversation_key: str, conversation_id: str, reason: str) -> None:
        """The conversation went to a person: the visitor asked, or an agent took it over unasked."""
        now = time.time()
        gap = f"handoff|{conversation_id}|{now:.6f}" if reason == REQUESTED else ""
        await self.record(conversation_key, handoff_reason=reason, gap_add=gap, when=now)

    async def forget(self, conversation_id: str, day: str) -> int:
        """Remove a conversation's gap references (erasure); the anonymous counts stay."""
        key = self.day_key(day, "gaps")
        members = [m async for m, _ in self._redis.zscan_iter(key, match=f"*|{conversation_id}|*", count=500)]
        return int(await self._redis.zrem(key, *members)) if members else 0


# ------------------------------------------------------------------ reading
@dataclass(slots=True)
class PeriodFigures:
    """One day or one week (Monday to Sunday, UTC) of figures."""

    start: str
    end: str  # the last day, inclusive
    conversations: int = 0  # started in the period with an answer, a rating or a handoff
    answered: int = 0  # of those, with at least one finished bot answer
    resolved: int = 0  # answered, never handed off, no answer whose latest rating is down
    resolution_rate: float | None = None  # resolved / answered
    answers: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    ratings: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    handoffs: dict[str, int] = field(default_factory=dict)  # by reason
    handed_off: int = 0  # conversations with at least one handoff
    time_to_first_text_p50_s: float | None = None
    time_to_first_text_p95_s: float | None = None
    timed_answers: int = 0
    _ttft: list[float] = field(default_factory=list, repr=False)

    def add_day(self, counters: dict[str, int], ttft: list[float]) -> None:
        self.conversations += counters.get("conversations", 0)
        self.answered += counters.get("answered", 0)
        self.resolved += counters.get("answered", 0) - counters.get("unresolved", 0)
        self.answers += counters.get("answers", 0)
        self.handed_off += counters.get("handed_off", 0)
        for name, value in counters.items():
            kind, _, what = name.partition(":")
            target = {"path": self.paths, "rating": self.ratings, "handoff": self.handoffs}.get(kind)
            if target is not None and value:
                target[what] = target.get(what, 0) + value
        self._ttft.extend(ttft)

    def finish(self) -> dict[str, Any]:
        if self.answered:
            self.resolution_rate = round(self.resolved / self.answered, 4)
        if self._ttft:
            p50, p95 = np.percentile(np.asarray(self._ttft), [50, 95])
            self.time_to_first_text_p50_s, self.time_to_first_text_p95_s = round(float(p50), 4), round(float(p95), 4)
        self.timed_answers = len(self._ttft)
        out = {k: getattr(self, k) for k in self.__slots__ if not k.startswith("_")}  # type: ignore[attr-defined]
        out["paths"] = dict(sorted(self.paths.items(), key=lambda kv: -kv[1]))
        out["handoffs"] = dict(sorted(self.handoffs.items(), key=lambda kv: -kv[1]))
        return out


def period_days(period: str, since: date, until: date) -> list[tuple[date, date]]:
    """The periods covering since..until: each day, or each Monday-to-Sunday week that touches it."""
    if period == "day":
        return [(since + timedelta(d), since + timedelta(d)) for d in range((until - since).days + 1)]
    first = since - timedelta(days=since.weekday())
    weeks = []
    while first <= until:
        weeks.append((first, first + timedelta(days=6)))
        first += timedelta(days=7)
    return weeks


class InsightsReport:
    """Reads the per-day figures back: one pipeline for the whole range."""

    def __init__(self, log: InsightsLog, redis: Any) -> None:
        self._log = log
        self._redis = redis

    async def figures(self, period: str, since: date, until: date) -> dict[str, Any]:
        periods = period_days(period, since, until)
        days = [periods[0][0] + timedelta(d) for d in range((periods[-1][1] - periods[0][0]).days + 1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in days:
                pipe.hgetall(self._log.day_key(d.isoformat()))
                pipe.lrange(self._log.day_key(d.isoformat(), "ttft"), 0, -1)
            replies = await pipe.execute()
        by_day = {
            d: ({k.decode(): int(v) for k, v in replies[2 * i].items()}, [float(x) for x in replies[2 * i + 1]])
            for i, d in enumerate(days)
        }
        rows, total = [], PeriodFigures(periods[0][0].isoformat(), periods[-1][1].isoformat())
        for start, end in periods:
            row = PeriodFigures(start.isoformat(), end.isoformat())
            d = start
            while d <= end:
                row.add_day(*by_day[d])
                total.add_day(*by_day[d])
                d += timedelta(days=1)
            rows.append(row.finish())
        return {"periods": rows, "total": total.finish()}


# ------------------------------------------------------------------ backfill
async def backfill(store: Any, log: InsightsLog, *, batch: int = 200) -> int:
    """Count the conversations that predate these figures (no `ins` on their hash), once.

    The one O(all conversations) pass, for data written before the figures existed. A
    conversation is claimed with HSETNX, so two workers never count it twice; an event that
    lands between reading its messages and claiming it is missed, never doubled."""
    redis, sealer = store.redis, store.sealer
    index = f"{store.prefix}conversations"
    counted, start = 0, 0
    while True:
        ids = [m.decode() for m in await redis.zrange(index, start, start + batch - 1)]
        if not ids:
            return counted
        start += batch
        for cid in ids:
            key = store.key(cid)
            meta = await redis.hmget(key, "ins", "created", "status")
            if meta[0] is not None or meta[1] is None:
                continue
            messages = [sealer.open(m) for m in await redis.lrange(store.key(cid, "messages"), 0, -1)]
            ratings = {k.decode(): v.decode() for k, v in (await redis.hgetall(store.key(cid, "ratings"))).items()}
            if not await redis.hsetnx(key, "ins", day_of(float(meta[1]))):
                continue
            counted += 1
            asked = False
            for message in messages:
                if message.get("role") != "assistant":
                    continue
                await log.record_answer(key, cid, message)
                asked = asked or message.get("path") == "human_requested"
                if message.get("id") in ratings:
                    await log.record_rating(key, cid, message["id"], "", ratings[message["id"]])
            if asked or (meta[2] or b"").decode() == "handoff":
                await log.record_handoff(key, cid, REQUESTED)
