"""Feedback on answers: visitors' ratings and agents' corrections, logged durably for retraining.

One `FeedbackLog.submit` call checks the target (an answer of this conversation), builds
the event with the answer's full context (question, earlier turns, passages, model, path,
prompt version) and, in one Lua script:

- refuses an event id it has seen (a resend gets the first outcome, nothing twice),
- appends the event to the `{p}feedback` stream, which `FeedbackSink` copies into
  date-partitioned JSONL files (bot/feedback/sink.py),
- keeps the answer's latest rating (last one wins; every event stays in the stream, the
  files and the conversation's feedback list, so the history is kept),
- counts corrections on the conversation for agents' filters,

and then moves the support lead's per-day rating counts from the answer's previous latest
rating to this one (bot/insights/daily.py).

The reply to the client is sent only after Redis has the event; with append-only
persistence nothing acknowledged is lost.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from bot.conversations import ConversationNotFound, ConversationStore

SCHEMA_VERSION = 1
MAX_COMMENT_CHARS = 2000
MAX_CORRECTION_CHARS = 8000
CONTEXT_TURNS = 6  # earlier messages kept with the answer's context
EVENT_ID_CHARS = 64
EVENT_ID_PATTERN = r"^[ -~]{1,64}$"  # printable ASCII: what the REST schema and the frames declare
# What `_clean` accepts, as patterns for the REST schema: no NUL; and at least one character
# that str.strip() keeps (\x1c-\x1f are whitespace to Python but not to JSON Schema's \s).
TEXT_PATTERN = r"^[^\x00]*$"
NON_BLANK_TEXT_PATTERN = r"^[^\x00]*[^\s\x00\x1c-\x1f][^\x00]*$"

Rating = Literal["up", "down"]

_RECORD = """
local first = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[6])
if not first then return {'duplicate', redis.call('GET', KEYS[1])} end
local stream_id = redis.call('XADD', KEYS[2], '*', 'event', ARGV[2])
redis.call('SET', KEYS[1], stream_id, 'XX', 'EX', ARGV[6])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[7])
local previous = ''
if ARGV[3] ~= '' then
  previous = redis.call('HGET', KEYS[4], ARGV[5]) or ''
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[3])
  redis.call('EXPIRE', KEYS[4], ARGV[7])
end
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[5], 'corrections', 1) end
return {'ok', stream_id, previous}
"""


class FeedbackError(ValueError):
    """Feedback that cannot be stored; `code` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Submitted:
    event_id: str
    stream_id: str
    duplicate: bool  # the event id was seen before: nothing new was stored


class FeedbackLog:
    def __init__(self, store: ConversationStore, *, dedupe_ttl_s: int = 7 * 24 * 3600) -> None:
        self._store = store
        self._redis: Any = store.redis
        self._record = self._redis.register_script(_RECORD)
        self._dedupe_ttl_s = dedupe_ttl_s

    @property
    def stream_key(self) -> str:
        return f"{self._store.prefix}feedback"

    async def submit(
        self,
        conversation_id: str,
        message_id: str,
        *,
        actor_role: Literal["user", "agent"],
        actor_id: str,
        rating: Rating | None = None,
        comment: str | None = None,
        correction: str | None = None,
        event_id: str | None = None,
    ) -> Submitted:
        """Store one rating (visitor or agent) or correction (agent) of an answer."""
        if rating is None and correction is None:
            raise FeedbackError("invalid_feedback", "feedback needs a rating or a correction")
        if rating is not None and rating not in ("up", "down"):
            raise FeedbackError("invalid_rating", f"rating must be 'up' or 'down', got {rating!r}")
        if correction is not None and actor_role != "agent":
            raise FeedbackError("forbidden", "only agents can correct answers")
        comment = _clean(comment, MAX_COMMENT_CHARS, "comment")
        correction = _clean(correction, MAX_CORRECTION_CHARS, "correction")
        if correction is not None and not correction:
            raise FeedbackError("invalid_feedback", "the correction is empty")
        event_id = event_id or f"f_{uuid.uuid4().hex}"
        if not re.fullmatch(EVENT_ID_PATTERN, event_id):
            raise FeedbackError("invalid_feedback", f"event_id must be 1-{EVENT_ID_CHARS} printable ASCII characters")

        messages = await self._store.messages(conversation_id)
        if not messages:
            await self._store.get(conversation_id)  # raises ConversationNotFound for unknown ids
        index = next((i for i, m in enumerate(messages) if m.get("id") == message_id), None)
        if index is None:
            raise FeedbackError("unknown_message", f"no message {message_id!r} in conversation {conversation_id}")
        answer = messages[index]
        if answer.get("role") != "assistant":
            raise FeedbackError("not_rateable", "only the bot's answers can be rated or corrected")
        if answer.get("path") == "cancelled":
            raise FeedbackError("not_rateable", "this answer was cancelled before it finished")

        event = {
            "schema": SCHEMA_VERSION,
            "event_id": event_id,
            "kind": "correction" if correction is not None else "rating",
            "conversation_id": conversation_id,
            "message_id": message_id,
            "rating": rating,
            "comment": comment,
            "correction": correction,
            "actor": {"role": actor_role, "id": actor_id},
            "time": time.time(),
            "context": _context(messages, index),
        }
        body = self._store.sealer.seal(event)
        keys = [
            f"{self._store.prefix}feedback:seen:{event_id}",
            self.stream_key,
            self._store.key(conversation_id, "feedback"),
            self._store.key(conversation_id, "ratings"),
            self._store.key(conversation_id),
        ]
        args = [
            "pending",
            body,
            rating or "",
            "1" if correction is not None else "0",
            message_id,
            self._dedupe_ttl_s,
            self._store.ttl_s,
        ]
        reply = await self._record(keys=keys, args=args)
        if reply[0] == b"ok" and rating is not None:  # the latest rating moves the insights' counts
            previous = reply[2].decode()
            await self._store.insights.record_rating(keys[4], conversation_id, message_id, previous, rating)
        return Submitted(event_id, reply[1].decode(), duplicate=reply[0] == b"duplicate")

    async def history(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every feedback event of a conversation, oldest first (without the context copy)."""
        raw = await self._redis.lrange(self._store.key(conversation_id, "feedback"), 0, -1)
        events = [self._store.sealer.open(item) for item in raw]
        for event in events:
            event.pop("context", None)
        return events

    async def latest_ratings(self, conversation_id: str) -> dict[str, str]:
        raw = await self._redis.hgetall(self._store.key(conversation_id, "ratings"))
        return {k.decode(): v.decode() for k, v in raw.items()}


def _clean(text: str | None, limit: int, what: str) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if len(text) > limit:
        raise FeedbackError(f"{what}_too_long", f"the {what} is {len(text)} characters; the limit is {limit}")
    if "\x00" in text:
        raise FeedbackError("invalid_feedback", f"the {what} contains a NUL character")
    return text


def _context(messages: list[dict[str, Any]], index: int) -> dict[str, Any]:
    """What a retraining job needs to rebuild the turn: the question, earlier turns, the passages."""
    answer = messages[index]
    question = next((m for m in reversed(messages[:index]) if m.get("role") == "user"), None)
    question_index = messages.index(question) if question is not None else index
    earlier = [
        {"role": "user" if m["role"] == "user" else "assistant", "text": m.get("text", "")}
        for m in messages[max(0, question_index - CONTEXT_TURNS) : question_index]
        if m.get("role") in ("user", "assistant", "agent") and m.get("path") != "cancelled"
    ]
    return {
        "question": question.get("text", "") if question else "",
        "history": earlier,
        "answer": answer.get("text", ""),
        "passages": answer.get("passages", []),
        "sources": [s.get("document_id") for s in answer.get("sources", [])],
        "model_id": answer.get("model_id", ""),
        "prompt_version": answer.get("prompt_version", ""),
        "path": answer.get("path", ""),
        "confidence": answer.get("confidence"),
    }


__all__ = ["ConversationNotFound", "FeedbackError", "FeedbackLog", "Submitted"]
