"""Conversation state in Redis: metadata, messages, and the sequenced event log clients resume from.

Key layout (all under one prefix, documented in docs/protocol.md):

    {p}conv:{id}              hash    created, updated, channel, status (bot|handoff|closed), agent, client, last_seq,
                                      answers, min_confidence, path:{path} counts, corrections
    {p}conv:{id}:messages     list    one JSON object per message (user, assistant, agent), oldest first
    {p}conv:{id}:events       stream  every sequenced frame sent to clients; entry id 0-{seq}
    {p}conv:{id}:cmid:{cmid}  string  the message id a client message id was answered as (resends)
    {p}conv:{id}:answering    string  lock while an answer streams (one answer at a time): "{worker id}/{token}"
    {p}conv:{id}:offered:{mid} string  a person was offered under answer mid after a thumbs-down (server/chat.py)
    {p}conv:{id}:ratings      hash    answer id -> its latest rating, up or down (bot/feedback/log.py)
    {p}conv:{id}:feedback     list    every feedback event on the conversation, oldest first (bot/feedback/log.py)
    {p}conversations          zset    conversation ids scored by last update (agents list by time)
    {p}handoff_queue          zset    conversations waiting for a person, scored by when they asked
    {p}live:{id}              channel each event as it is appended (server/events.py fans it out)
    {p}worker:{worker id}     channel each worker's event hub subscribes to it: the lock holder is alive while it has a subscriber
    {p}insights:day:{day}*    the support lead's per-day figures (bot/insights/daily.py)

Every key of a conversation expires `ttl_s` after its last update. Sequence numbers come
from the hash's `last_seq`, incremented in the same Lua script that appends the event, so
two workers appending to one conversation can never reuse or reorder a number.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from bot.insights.daily import AGENT_TAKEOVER, REQUESTED, InsightsLog, day_of
from bot.privacy.crypto import Sealer

# Appends one frame (JSON without its opening brace) to a conversation's event stream under the
# next sequence number, publishes it for live sockets, and refreshes the expiries. Shared by
# the scripts below, so a user message and an answer token are numbered the same way.
_APPEND_FUNCTION = """
local function append(meta, events, index, body, now, ttl, id, channel)
  local seq = redis.call('HINCRBY', meta, 'last_seq', 1)
  redis.call('HSET', meta, 'updated', now)
  if body ~= '}' then body = ',' .. body end
  local frame = '{"seq":' .. seq .. body
  redis.call('XADD', events, '0-' .. seq, 'frame', frame)
  redis.call('PUBLISH', channel, frame)
  redis.call('ZADD', index, now, id)
  redis.call('EXPIRE', meta, ttl)
  redis.call('EXPIRE', events, ttl)
  return seq
end
"""

_APPEND_EVENT = (
    _APPEND_FUNCTION
    + """
return append(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""
)

# The whole "a user message arrived" step in one round trip: refuse a resent client message
# id (returning the answer it got), take the one-answer lock when the bot has the
# conversation, read the recent history, store the message and append its event.
_BEGIN_TURN_BODY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local earlier = redis.call('GET', KEYS[2])
if earlier then return {'duplicate', earlier} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'closed' then
  status = 'bot'  -- a visitor writing into a closed conversation reopens it with the bot
  redis.call('HSET', KEYS[1], 'status', status)
end
local locked = '0'
if status == 'bot' then
  if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'busy'} end
  locked = '1'
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[7])
local history = redis.call('LRANGE', KEYS[4], -tonumber(ARGV[10]), -1)
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[7])
local seq = append(KEYS[1], KEYS[5], KEYS[6], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return {'ok', status, locked, seq, history}
"""
_BEGIN_TURN = _APPEND_FUNCTION + _BEGIN_TURN_BODY

# With a guard (a rate limit, say) checked first in the same script: its keys follow the
# six above, its arguments the ten above, and `guard(keys, argv)` returns the seconds to wait.
_GUARD_CALL = """
local guard_keys, guard_args = {}, {}
for i = 7, #KEYS do guard_keys[#guard_keys + 1] = KEYS[i] end
for i = 11, #ARGV do guard_args[#guard_args + 1] = ARGV[i] end
local wait = guard(guard_keys, guard_args)
if wait > 0 then return {'limited', tostring(wait)} end
"""

# Status changes: a visitor asks for a person (request), an agent takes over, hands back or
# closes. One script checks who holds the conversation and records the change as an event,
# so every open widget hears it and two agents cannot both take one conversation.
_SET_STATUS = (
    _APPEND_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local action, agent, now = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', KEYS[1], 'status')
local holder = redis.call('HGET', KEYS[1], 'agent') or ''
if action == 'request' then
  if status == 'handoff' then return {'unchanged', status, holder} end
  redis.call('HSET', KEYS[1], 'status', 'handoff', 'agent', '')
  redis.call('ZADD', KEYS[3], now, ARGV[7])
elseif action == 'takeover' then
  if status == 'handoff' and holder ~= '' and holder ~= agent then return {'held', status, holder} end
  if status == 'handoff' and holder == agent then return {'unchanged', status, holder} end
  redis.call('HSET', KEYS[1], 'status', 'handoff', 'agent', agent)
  redis.call('ZREM', KEYS[3], ARGV[7])
elseif action == 'handback' or action == 'close' then
  if holder ~= '' and holder ~= agent then return {'held', status, holder} end
  local target = action == 'close' and 'closed' or 'bot'
  if status == target then return {'unchanged', status, holder} end
  redis.call('HSET', KEYS[1], 'status', target, 'agent', '')
  redis.call('ZREM', KEYS[3], ARGV[7])
end
local seq = append(KEYS[1], KEYS[2], KEYS[4], ARGV[4], now, ARGV[5], ARGV[7], ARGV[6])
return {'ok', redis.call('HGET', KEYS[1], 'status'), redis.call('HGET', KEYS[1], 'agent'), seq, status}
"""
)

# An agent's message: only from the agent holding the conversation.
_AGENT_MESSAGE = (
    _APPEND_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local holder = redis.call('HGET', KEYS[1], 'agent') or ''
if redis.call('HGET', KEYS[1], 'status') ~= 'handoff' or holder ~= ARGV[1] then return {'not_holder', holder} end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {'ok', append(KEYS[1], KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])}
"""
)

# Stores a message (an answer also updates the summary fields agents filter on) and appends
# the frames that announce it, in one step: an answer can no longer be stored while its
# `done` is not (a Redis killed between the two left the visitor waiting for a `done` no
# resend could bring: the reclaim saw the answer stored).
_ADD_MESSAGE = (
    _APPEND_FUNCTION
    + """
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'answers', 1)
  redis.call('HINCRBY', KEYS[1], 'path:' .. ARGV[3], 1)
  local confidence = tonumber(ARGV[4])
  local lowest = tonumber(redis.call('HGET', KEYS[1], 'min_confidence') or '2')
  if confidence and confidence < lowest then redis.call('HSET', KEYS[1], 'min_confidence', ARGV[4]) end
end
local last = 0
for i = 8, #ARGV do last = append(KEYS[1], KEYS[3], KEYS[4], ARGV[i], ARGV[5], ARGV[2], ARGV[6], ARGV[7]) end
return last
"""
)

# Take the answer lock of a resent message's turn: when it is free, or (take_over) when the
# worker named in it has no subscriber on its worker channel, i.e. its process is gone (the
# kernel closed its connections, Redis dropped its subscriptions). Compare-and-set in one
# script: two workers cannot both take it. 0: held by a live worker; 1: taken; 2: taken over.
_TAKE_LOCK = """
local held = redis.call('GET', KEYS[1])
if held then
  if ARGV[3] ~= '1' then return {0, held} end
  local holder = string.match(held, '^([^/]+)/')
  if not holder then return {0, held} end  -- no holder named: wait for the lock to lapse
  if redis.call('PUBSUB', 'NUMSUB', ARGV[4] .. holder)[2] > 0 then return {0, held} end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if held then return {2, held} end
return {1, ''}
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class ConversationNotFound(LookupError):
    pass


class TurnGuard(Protocol):
    """A check run atomically before a turn begins: `function` is Lua source defining
    `local function guard(keys, argv)` that returns the seconds to wait (0: go on)."""

    @property
    def function(self) -> str: ...
    @property
    def keys(self) -> list[str]: ...
    @property
    def args(self) -> list[float | int]: ...


class HeldByAnotherAgent(RuntimeError):
    """Another agent holds the conversation; `agent` says who."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"agent {agent!r} holds this conversation")
        self.agent = agent


@dataclass(frozen=True, slots=True)
class StatusChange:
    changed: bool  # False: the conversation was already in that state
    status: str
    agent: str
    seq: int = 0


@dataclass(frozen=True, slots=True)
class TurnStart:
    outcome: str  # ok | duplicate | busy | limited
    status: str = ""  # the conversation's status (ok)
    lock_token: str = ""  # ok, bot's turn: the caller holds the answer lock; answer, then unlock with this
    seq: int = 0  # ok: the user message's event
    history: tuple[dict[str, Any], ...] = ()  # ok: the messages before this one, oldest first
    earlier_answer_id: str = ""  # duplicate
    replaced: str = ""  # reclaim_turn, ok: the lock it took over from a worker that was gone
    retry_after_s: float = 0.0  # limited: the guard's wait


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    created: float
    updated: float
    channel: str
    status: str
    client: dict[str, Any]
    last_seq: int
    agent: str = ""
    answers: int = 0
    min_confidence: float | None = None
    paths: dict[str, int] | None = None
    corrections: int = 0


class ConversationStore:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "sb:",
        ttl_s: int = 30 * 24 * 3600,
        sealer: Sealer | None = None,
        insights_retention_s: int = 400 * 86400,
    ) -> None:
        self.redis: Any = redis  # redis-py's stubs type replies loosely; replies here are bytes
        self.sealer = sealer or Sealer()
        self._p = prefix
        self._ttl = ttl_s
        # The support lead's per-day figures, counted as each event is recorded (bot/insights/daily.py).
        self.insights = InsightsLog(redis, prefix, retention_s=insights_retention_s, gap_ttl_s=ttl_s + 86400)
        self._append = redis.register_script(_APPEND_EVENT)
        self._release = redis.register_script(_RELEASE_LOCK)
        self._extend = redis.register_script(_EXTEND_LOCK)
        self._begin = redis.register_script(_BEGIN_TURN)
        self._guarded: dict[str, Any] = {}  # guard source -> its begin-turn script
        self._set_status = redis.register_script(_SET_STATUS)
        self._agent_message = redis.register_script(_AGENT_MESSAGE)
        self._add_message = redis.register_script(_ADD_MESSAGE)
        self._take_lock = redis.register_script(_TAKE_LOCK)

    @property
    def prefix(self) -> str:
        return self._p

    @property
    def ttl_s(self) -> int:
        return self._ttl

    def key(self, conversation_id: str, part: str = "") -> str:
        """The Redis key of a conversation (or one of its parts); other stores file under it."""
        return f"{self._p}conv:{conversation_id}{':' + part if part else ''}"

    async def create(
        self, *, channel: str = "widget", client: dict[str, Any] | None = None, user_id: str | None = None
    ) -> Conversation:
        """A new conversation; `user_id` (the site's own id for a signed-in customer) lets erasure find it."""
        conversation_id = f"c_{uuid.uuid4().hex}"
        now = time.time()
        meta: dict[str, str | float | int] = {
            "created": now,
            "updated": now,
            "channel": channel,
            "status": "bot",
            "client": self.sealer.seal(client or {}),
            "last_seq": 0,
            "ins": day_of(now),  # counted in the per-day insights from its first event
        }
        if user_id:
            meta["user_id"] = user_id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(conversation_id), mapping=meta)
            pipe.expire(self.key(conversation_id), self._ttl)
            pipe.zadd(f"{self._p}conversations", {conversation_id: now})
            if user_id:
                pipe.sadd(self.user_key(user_id), conversation_id)
                pipe.expire(self.user_key(user_id), self._ttl)
            await pipe.execute()
        return Conversation(conversation_id, now, now, channel, "bot", client or {}, 0)

    async def get(self, conversation_id: str) -> Conversation:
        if not conversation_id.startswith("c_") or len(conversation_id) > 64:
            raise ConversationNotFound(conversation_id)
        raw = await self.redis.hgetall(self.key(conversation_id))
        if not raw:
            raise ConversationNotFound(conversation_id)
        return _conversation(conversation_id, raw, self.sealer)

    async def append_event(self, conversation_id: str, frame: dict[str, Any]) -> int:
        """Store a frame for clients and return its sequence number (also written into the frame)."""
        now = time.time()
        body = self._event_body(frame)  # the script puts "seq" first
        keys = [self.key(conversation_id), self.key(conversation_id, "events"), f"{self._p}conversations"]
        channel = f"{self._p}live:{conversation_id}"
        return int(await self._append(keys=keys, args=[body, now, self._ttl, conversation_id, channel]))

    async def events_after(self, conversation_id: str, seq: int) -> list[dict[str, Any]]:
        """Frames with sequence numbers above `seq`, oldest first."""
        entries = await self.redis.xrange(self.key(conversation_id, "events"), min=f"0-{seq + 1}", max="+")
        return [self.open_frame(json.loads(fields[b"frame"])) for _, fields in entries]

    def _event_body(self, frame: dict[str, Any]) -> str:
        """A frame as the Lua append function takes it: JSON without its opening brace, sealed if keys are set."""
        body = {"sealed": self.sealer.seal(frame)} if self.sealer.enabled else frame
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)[1:]

    def open_frame(self, frame: dict[str, Any]) -> dict[str, Any]:
        """A stored or published frame as clients get it (unsealed)."""
        sealed = frame.get("sealed")
        if sealed is None:
            return frame
        return {"seq": frame["seq"], **self.sealer.open(sealed)}

    def user_key(self, user_id: str) -> str:
        """The set of conversation ids of one of the site's users (the widget's data-user-id)."""
        return f"{self._p}user:{user_id}"

    async def add_message(self, conversation_id: str, message: dict[str, Any], frames: Sequence[dict[str, Any]] = ()) -> int:
        """Store a message and append `frames` (an answer's sources and `done`) in one script,
        so no crash or Redis outage can leave an answer stored but never announced. An answer
        (an assistant message with a `path`) also updates the conversation's summary and the
        insights. Returns the last frame's sequence number (0 without frames)."""
        keys = [
            self.key(conversation_id),
            self.key(conversation_id, "messages"),
            self.key(conversation_id, "events"),
            f"{self._p}conversations",
        ]
        path = str(message.get("path", "")) if message.get("role") == "assistant" else ""
        confidence = message.get("confidence")
        args: list[str | int | float] = [
            self.sealer.seal(message),
            self._ttl,
            path,
            "" if confidence is None else confidence,
            time.time(),
            conversation_id,
            f"{self._p}live:{conversation_id}",
            *(self._event_body(frame) for frame in frames),
        ]
        last = int(await self._add_message(keys=keys, args=args))
        if path:
            await self.insights.record_answer(keys[0], conversation_id, message)
        return last

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        return [self.sealer.open(m) for m in await self.redis.lrange(self.key(conversation_id, "messages"), 0, -1)]

    async def begin_turn(
        self,
        conversation_id: str,
        *,
        client_message_id: str,
        answer_id: str,
        user_message: dict[str, Any],
        event: dict[str, Any],
        lock_ttl_s: float,
        history: int,
        guard: TurnGuard | None = None,
        holder: str = "",
    ) -> TurnStart:
        """Store a user message and decide, atomically, whether the bot answers it (see _BEGIN_TURN).

        With a `guard`, it runs first in the same script; when it says wait, nothing is stored.
        `holder` (the worker's id, server/events.py) is named in the answer lock, so a resent
        message can take over the lock of a worker that died (reclaim_turn)."""
        token = f"{holder}/{secrets.token_hex(8)}"
        now = time.time()
        keys = [
            self.key(conversation_id),
            self.key(conversation_id, f"cmid:{client_message_id}"),
            self.key(conversation_id, "answering"),
            self.key(conversation_id, "messages"),
            self.key(conversation_id, "events"),
            f"{self._p}conversations",
        ]
        args: list[str | int | float] = [
            answer_id,
            token,
            int(lock_ttl_s * 1000),
            self.sealer.seal(user_message),
            self._event_body(event),
            now,
            self._ttl,
            conversation_id,
            f"{self._p}live:{conversation_id}",
            history,
        ]
        script: Any = self._begin
        if guard is not None:
            if guard.function not in self._guarded:
                source = guard.function + _APPEND_FUNCTION + _GUARD_CALL + _BEGIN_TURN_BODY
                self._guarded[guard.function] = self.redis.register_script(source)
            script = self._guarded[guard.function]
            keys += guard.keys
            args += guard.args
        reply = await script(keys=keys, args=args)
        outcome = reply[0].decode()
        if outcome == "limited":
            return TurnStart("limited", retry_after_s=float(reply[1]))
        if outcome == "missing":
            raise ConversationNotFound(conversation_id)
        if outcome == "duplicate":
            return TurnStart("duplicate", earlier_answer_id=reply[1].decode())
        if outcome == "busy":
            return TurnStart("busy")
        return TurnStart(
            "ok",
            status=reply[1].decode(),
            lock_token=token if reply[2] == b"1" else "",
            seq=int(reply[3]),
            history=tuple(self.sealer.open(m) for m in reply[4]),
        )

    async def change_status(self, conversation_id: str, action: str, *, agent: str = "", reason: str = "") -> StatusChange:
        """`request` (a visitor asks for a person: the handoff queue), `takeover`, `handback`
        (to the bot) or `close`, by `agent`. Raises HeldByAnotherAgent when someone else holds it."""
        if action not in ("request", "takeover", "handback", "close"):
            raise ValueError(f"unknown status action {action!r}")
        target = {"request": "handoff", "takeover": "handoff", "handback": "bot", "close": "closed"}[action]
        event = {"type": "status", "status": target, "agent": agent if action == "takeover" else None, "reason": reason or action}
        keys = [
            self.key(conversation_id),
            self.key(conversation_id, "events"),
            f"{self._p}handoff_queue",
            f"{self._p}conversations",
        ]
        body = self._event_body(event)
        args: list[str | int | float] = [
            action,
            agent,
            time.time(),
            body,
            self._ttl,
            f"{self._p}live:{conversation_id}",
            conversation_id,
        ]
        # Shielded: a visitor who closes the widget just as the bot hands them over must not
        # leave a status change that happened in Redis uncounted in the insights.
        return await asyncio.shield(self._apply_status(conversation_id, action, keys, args))

    async def _apply_status(
        self, conversation_id: str, action: str, keys: list[str], args: list[str | int | float]
    ) -> StatusChange:
        reply = await self._set_status(keys=keys, args=args)
        outcome = reply[0].decode()
        if outcome == "missing":
            raise ConversationNotFound(conversation_id)
        if outcome == "held":
            raise HeldByAnotherAgent(reply[2].decode())
        seq = int(reply[3]) if outcome == "ok" else 0
        if outcome == "ok" and action == "request":
            await self.insights.record_handoff(keys[0], conversation_id, REQUESTED)
        elif outcome == "ok" and action == "takeover" and reply[4] != b"handoff":
            await self.insights.record_handoff(keys[0], conversation_id, AGENT_TAKEOVER)
        return StatusChange(outcome == "ok", reply[1].decode(), (reply[2] or b"").decode(), seq)

    async def add_agent_message(self, conversation_id: str, agent: str, text: str) -> tuple[str, int]:
        """Store an agent's message and send it to the visitor; returns (message id, seq)."""
        message_id = f"a_{uuid.uuid4().hex}"
        now = time.time()
        message = {"id": message_id, "role": "agent", "agent": agent, "text": text, "created": now}
        event = {"type": "agent_message", "message_id": message_id, "agent": agent, "text": text}
        keys = [
            self.key(conversation_id),
            self.key(conversation_id, "messages"),
            self.key(conversation_id, "events"),
            f"{self._p}conversations",
        ]
        args: list[str | int | float] = [
            agent,
            self.sealer.seal(message),
            self._event_body(event),
            now,
            self._ttl,
            conversation_id,
            f"{self._p}live:{conversation_id}",
        ]
        reply = await self._agent_message(keys=keys, args=args)
        if reply[0] == b"missing":
            raise ConversationNotFound(conversation_id)
        if reply[0] == b"not_holder":
            holder = reply[1].decode()
            if holder:
                raise HeldByAnotherAgent(holder)
            raise PermissionError("take the conversation over before writing to the visitor")
        return message_id, int(reply[1])

    async def handoff_queue(self) -> list[tuple[str, float]]:
        """Conversations waiting for a person, longest-waiting first."""
        return [(m.decode(), s) for m, s in await self.redis.zrange(f"{self._p}handoff_queue", 0, -1, withscores=True)]

    async def extend_answer_lock(self, conversation_id: str, token: str, ttl_s: float) -> bool:
        """Keep the answer lock while the answer is written; False if it was lost (it expired)."""
        extended = await self._extend(keys=[self.key(conversation_id, "answering")], args=[token, int(ttl_s * 1000)])
        return bool(extended)

    async def reclaim_turn(
        self,
        conversation_id: str,
        client_message_id: str,
        answer_id: str,
        *,
        lock_ttl_s: float,
        history: int,
        holder: str = "",
        take_over: bool = False,
    ) -> TurnStart:
        """A resent message whose answer was never stored: the worker writing it died
        (SIGKILL, a Redis outage mid-answer). Take the lock, when it is free or (`take_over`)
        when the worker named in it is gone, and answer it again under the same answer id, so
        the visitor still gets one answer. `busy` while a live worker holds the lock (the
        answer may still come); `duplicate` when the answer was stored meanwhile or is not the
        bot's to write (a person has the chat)."""
        duplicate = TurnStart("duplicate", earlier_answer_id=answer_id)
        token = f"{holder}/{secrets.token_hex(8)}"
        lock = self.key(conversation_id, "answering")
        taken, held = await self._take_lock(
            keys=[lock], args=[token, int(lock_ttl_s * 1000), "1" if take_over else "0", f"{self._p}worker:"]
        )
        if not taken:
            return TurnStart("busy", earlier_answer_id=answer_id)  # being written (a grace-period answer, a retry)
        replaced = held.decode() if taken == 2 else ""
        messages = await self.messages(conversation_id)
        asked = [n for n, m in enumerate(messages) if m["role"] == "user" and m.get("client_message_id") == client_message_id]
        status = (await self.redis.hget(self.key(conversation_id), "status") or b"").decode()
        if any(m["id"] == answer_id for m in messages) or not asked or status != "bot":
            await self.unlock_answer(conversation_id, token)
            return duplicate
        at = asked[-1]
        return TurnStart(
            "ok", status=status, lock_token=token, history=tuple(messages[max(0, at - history) : at]), replaced=replaced
        )

    async def answer_streaming(self, conversation_id: str) -> bool:
        """Whether some worker holds this conversation's answer lock (an answer is being written)."""
        return bool(await self.redis.exists(self.key(conversation_id, "answering")))

    async def unlock_answer(self, conversation_id: str, token: str) -> None:
        await self._release(keys=[self.key(conversation_id, "answering")], args=[token])


def _conversation(conversation_id: str, raw: dict[bytes, bytes], sealer: Sealer) -> Conversation:
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    return Conversation(
        conversation_id,
        float(meta["created"]),
        float(meta["updated"]),
        meta["channel"],
        meta["status"],
        sealer.open(meta.get("client", "{}")),
        int(meta.get("last_seq", 0)),
        agent=meta.get("agent", ""),
        answers=int(meta.get("answers", 0)),
        min_confidence=float(meta["min_confidence"]) if "min_confidence" in meta else None,
        paths={k.removeprefix("path:"): int(v) for k, v in meta.items() if k.startswith("path:")},
        corrections=int(meta.get("corrections", 0)),
    )
