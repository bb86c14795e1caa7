"""What support agents read: conversation lists with filters, and full transcripts.

Lists walk the `{p}conversations` index newest first (one ZREVRANGEBYSCORE per page of
candidates) and filter on each conversation's summary hash, fetched for a whole page in
one pipeline; full-text search reads the messages of the candidates that pass the other
filters. No search engine is needed at the sizes one support team produces; a request
looks at `scan_limit` candidates at most and hands back a cursor to go on from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from bot.conversations import Conversation, ConversationStore, _conversation
from bot.feedback.log import FeedbackLog
from bot.privacy.crypto import Sealer

Status = Literal["bot", "handoff", "closed"]
PAGE = 200  # index entries fetched per round trip
CURSOR_PATTERN = r"^[0-9]{1,17}(\.[0-9]{1,17})?([eE][-+]?[0-9]{1,3})?$"  # a last-activity score


@dataclass(frozen=True, slots=True)
class ConversationQuery:
    since: float | None = None  # last update, inclusive
    until: float | None = None  # last update, exclusive
    status: Status | None = None
    waiting: bool | None = None  # handoff with no agent yet
    rating: Literal["down", "up"] | None = None  # has an answer whose latest rating is this
    corrected: bool | None = None
    low_confidence: float | None = None  # an answer below this confidence
    path: str | None = None  # an answer took this path (fallback, not_sure, error, ...)
    text: str | None = None  # every word appears in the conversation's messages
    limit: int = 20
    cursor: str | None = None  # from the previous page
    scan_limit: int = 5000


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation: Conversation
    ratings: dict[str, int]  # latest ratings of its answers: {"up": n, "down": m}
    preview: str  # the first user message


@dataclass(frozen=True, slots=True)
class ConversationPage:
    items: list[ConversationSummary]
    next_cursor: str | None  # None: nothing older matches


class Review:
    def __init__(self, store: ConversationStore, feedback: FeedbackLog) -> None:
        self._store = store
        self._feedback = feedback
        self._redis: Any = store.redis

    async def search(self, query: ConversationQuery) -> ConversationPage:
        index = f"{self._store.prefix}conversations"
        upper = f"({query.until}" if query.until is not None else "+inf"
        if query.cursor:
            upper = f"({_cursor_score(query.cursor)}"
        lower = str(query.since) if query.since is not None else "-inf"
        words = [w for w in (query.text or "").lower().split() if w]
        items: list[ConversationSummary] = []
        scanned = 0
        while True:
            batch = await self._redis.zrevrangebyscore(index, upper, lower, start=0, num=PAGE, withscores=True)
            if not batch:
                return ConversationPage(items, None)
            async with self._redis.pipeline(transaction=False) as pipe:
                for member, _ in batch:
                    cid = member.decode()
                    pipe.hgetall(self._store.key(cid))
                    pipe.hvals(self._store.key(cid, "ratings"))
                    pipe.lindex(self._store.key(cid, "messages"), 0)
                replies = await pipe.execute()
            stale = []
            full = False
            for i, (member, score) in enumerate(batch):
                scanned += 1
                upper = f"({score!r}"
                meta, ratings_raw, first = replies[3 * i : 3 * i + 3]
                cid = member.decode()
                if not meta:
                    stale.append(cid)
                elif _matches(summary := _summary(cid, meta, ratings_raw, first, self._store.sealer), query) and (
                    not words or await self._has_words(cid, words)
                ):
                    items.append(summary)
                if len(items) >= query.limit or scanned >= query.scan_limit:
                    full = True
                    break
            if stale:  # expired conversations leave their index entry behind
                await self._redis.zrem(index, *stale)
            if full:
                return ConversationPage(items, upper.removeprefix("("))
            if len(batch) < PAGE:
                return ConversationPage(items, None)

    async def _has_words(self, conversation_id: str, words: list[str]) -> bool:
        texts = await self._redis.lrange(self._store.key(conversation_id, "messages"), 0, -1)
        haystack = " ".join(self._store.sealer.open(t).get("text", "") for t in texts).lower()
        return all(word in haystack for word in words)

    async def transcript(self, conversation_id: str) -> dict[str, Any]:
        """The conversation, every message, and every feedback event, attached to its message."""
        conversation = await self._store.get(conversation_id)
        messages = await self._store.messages(conversation_id)
        feedback = await self._feedback.history(conversation_id)
        latest = await self._feedback.latest_ratings(conversation_id)
        by_message: dict[str, list[dict[str, Any]]] = {}
        for event in feedback:
            by_message.setdefault(event["message_id"], []).append(event)
        for message in messages:
            message["feedback"] = by_message.get(message["id"], [])
            if message.get("role") == "assistant":
                message["rating"] = latest.get(message["id"])
                corrections = [e for e in message["feedback"] if e.get("correction") is not None]
                message["correction"] = corrections[-1]["correction"] if corrections else None
        return {"conversation": conversation, "messages": messages}


def _summary(
    cid: str, meta: dict[bytes, bytes], ratings_raw: list[bytes], first: bytes | None, sealer: Sealer
) -> ConversationSummary:
    ratings = [r.decode() for r in ratings_raw]
    return ConversationSummary(
        _conversation(cid, meta, sealer),
        {"up": ratings.count("up"), "down": ratings.count("down")},
        sealer.open(first).get("text", "")[:200] if first else "",
    )


def _cursor_score(cursor: str) -> float:
    if not re.fullmatch(CURSOR_PATTERN, cursor):  # float() would also take "nan", which Redis refuses
        raise ValueError(f"not a cursor from this API: {cursor!r}")
    return float(cursor)


def _matches(summary: ConversationSummary, query: ConversationQuery) -> bool:
    c = summary.conversation
    if query.status is not None and c.status != query.status:
        return False
    if query.waiting is not None and (c.status == "handoff" and not c.agent) != query.waiting:
        return False
    if query.rating is not None and not summary.ratings[query.rating]:
        return False
    if query.corrected is not None and (c.corrections > 0) != query.corrected:
        return False
    if query.low_confidence is not None and (c.min_confidence is None or c.min_confidence >= query.low_confidence):
        return False
    return query.path is None or bool((c.paths or {}).get(query.path))
