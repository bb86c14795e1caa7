"""Conversation state in Redis: metadata, messages, and the sequenced event log clients resume from.

Key layout (all under one prefix, documented in docs/protocol.md):

    {p}conv:{id}              hash    created, updated, channel, status (bot|handoff|closed), client, last_seq
    {p}conv:{id}:messages     list    one JSON object per message, oldest first
    {p}conv:{id}:events       stream  every sequenced frame sent to clients; entry id 0-{seq}
    {p}conv:{id}:cmid:{cmid}  string  the message id a client message id was answered as (resends)
    {p}conv:{id}:answering    string  lock token while an answer streams (one answer at a time)
    {p}conv:{id}:ratings      hash    answer id -> its latest rating
    {p}conversations          zset    conversation ids scored by last update (agents list by time)
    {p}live:{id}              channel each event as it is appended (server/events.py fans it out)

Every key of a conversation expires `ttl_s` after its last update. Sequence numbers come
from the hash's `last_seq`, incremented in the same Lua script that appends the event, so
two workers appending to one conversation can never reuse or reorder a number.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

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
_BEGIN_TURN = (
    _APPEND_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local earlier = redis.call('GET', KEYS[2])
if earlier then return {'duplicate', earlier} end
local status = redis.call('HGET', KEYS[1], 'status')
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
)

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ConversationNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class TurnStart:
    outcome: str  # ok | duplicate | busy
    status: str = ""  # the conversation's status (ok)
    lock_token: str = ""  # ok, bot's turn: the caller holds the answer lock; answer, then unlock with this
    seq: int = 0  # ok: the user message's event
    history: tuple[dict[str, Any], ...] = ()  # ok: the messages before this one, oldest first
    earlier_answer_id: str = ""  # duplicate


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    created: float
    updated: float
    channel: str
    status: str
    client: dict[str, Any]
    last_seq: int


class ConversationStore:
    def __init__(self, redis: Redis, *, prefix: str = "sb:", ttl_s: int = 30 * 24 * 3600) -> None:
        self.redis: Any = redis  # redis-py's stubs type replies loosely; replies here are bytes
        self._p = prefix
        self._ttl = ttl_s
        self._append = redis.register_script(_APPEND_EVENT)
        self._release = redis.register_script(_RELEASE_LOCK)
        self._begin = redis.register_script(_BEGIN_TURN)

    def _key(self, conversation_id: str, part: str = "") -> str:
        return f"{self._p}conv:{conversation_id}{':' + part if part else ''}"

    async def create(self, *, channel: str = "widget", client: dict[str, Any] | None = None) -> Conversation:
        conversation_id = f"c_{uuid.uuid4().hex}"
        now = time.time()
        meta = {
            "created": now,
            "updated": now,
            "channel": channel,
            "status": "bot",
            "client": json.dumps(client or {}),
            "last_seq": 0,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(conversation_id), mapping=meta)
            pipe.expire(self._key(conversation_id), self._ttl)
            pipe.zadd(f"{self._p}conversations", {conversation_id: now})
            await pipe.execute()
        return Conversation(conversation_id, now, now, channel, "bot", client or {}, 0)

    async def get(self, conversation_id: str) -> Conversation:
        if not conversation_id.startswith("c_") or len(conversation_id) > 64:
            raise ConversationNotFound(conversation_id)
        raw = await self.redis.hgetall(self._key(conversation_id))
        if not raw:
            raise ConversationNotFound(conversation_id)
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        return Conversation(
            conversation_id,
            float(meta["created"]),
            float(meta["updated"]),
            meta["channel"],
            meta["status"],
            json.loads(meta.get("client", "{}")),
            int(meta.get("last_seq", 0)),
        )

    async def append_event(self, conversation_id: str, frame: dict[str, Any]) -> int:
        """Store a frame for clients and return its sequence number (also written into the frame)."""
        now = time.time()
        body = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)[1:]  # the script puts "seq" first
        keys = [self._key(conversation_id), self._key(conversation_id, "events"), f"{self._p}conversations"]
        channel = f"{self._p}live:{conversation_id}"
        return int(await self._append(keys=keys, args=[body, now, self._ttl, conversation_id, channel]))

    async def events_after(self, conversation_id: str, seq: int) -> list[dict[str, Any]]:
        """Frames with sequence numbers above `seq`, oldest first."""
        entries = await self.redis.xrange(self._key(conversation_id, "events"), min=f"0-{seq + 1}", max="+")
        return [json.loads(fields[b"frame"]) for _, fields in entries]

    async def add_message(self, conversation_id: str, message: dict[str, Any]) -> None:
        key = self._key(conversation_id, "messages")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(message, ensure_ascii=False))
            pipe.expire(key, self._ttl)
            await pipe.execute()

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        return [json.loads(m) for m in await self.redis.lrange(self._key(conversation_id, "messages"), 0, -1)]

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
    ) -> TurnStart:
        """Store a user message and decide, atomically, whether the bot answers it (see _BEGIN_TURN)."""
        token = secrets.token_hex(8)
        now = time.time()
        keys = [
            self._key(conversation_id),
            self._key(conversation_id, f"cmid:{client_message_id}"),
            self._key(conversation_id, "answering"),
            self._key(conversation_id, "messages"),
            self._key(conversation_id, "events"),
            f"{self._p}conversations",
        ]
        args: list[str | int | float] = [
            answer_id,
            token,
            int(lock_ttl_s * 1000),
            json.dumps(user_message, ensure_ascii=False),
            json.dumps(event, separators=(",", ":"), ensure_ascii=False)[1:],
            now,
            self._ttl,
            conversation_id,
            f"{self._p}live:{conversation_id}",
            history,
        ]
        reply = await self._begin(keys=keys, args=args)
        outcome = reply[0].decode()
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
            history=tuple(json.loads(m) for m in reply[4]),
        )

    async def set_rating(self, conversation_id: str, message_id: str, rating: dict[str, Any]) -> None:
        """The latest rating of an answer (issue 5 replaces this with the feedback stream)."""
        await self.redis.hset(self._key(conversation_id, "ratings"), message_id, json.dumps(rating))

    async def unlock_answer(self, conversation_id: str, token: str) -> None:
        await self._release(keys=[self._key(conversation_id, "answering")], args=[token])
