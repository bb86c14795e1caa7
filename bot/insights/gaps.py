"""Content gaps: the questions the bot was not sure about, that were rated down, or after
which the visitor asked for a person, grouped by meaning, so a writer knows what to add.

The questions are read from the conversations themselves (the per-day references in
bot/insights/daily.py point at them), so no visitor text outlives its conversation: an
expired or erased conversation drops out of the gaps. The grouping embeds each question
with the retriever's own sentence embedder and clusters with scikit-learn's
AgglomerativeClustering (average linkage, cosine distance, a distance threshold instead of a
fixed number of groups); each group gets the help-center article closest to its most
central question.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from bot.conversations import ConversationStore
from bot.insights.daily import GAP_KINDS
from retrieval.embedder import Embedder
from retrieval.retriever import Retriever

# Cosine distance below which two questions ask the same thing. all-MiniLM-L6-v2 puts
# paraphrases at 0.2-0.45 and different topics of one help center above 0.6.
DEFAULT_DISTANCE_THRESHOLD = 0.5
_NOT_A_QUESTION = ("human_requested", "cancelled", "small_talk")


@dataclass(slots=True)
class GapQuestion:
    text: str
    conversation_id: str
    answer_id: str
    time: float
    kinds: set[str] = field(default_factory=set)


class ContentGaps:
    def __init__(
        self,
        store: ConversationStore,
        embedder: Embedder,
        retriever: Retriever,
        *,
        distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD,
        max_questions: int = 500,
    ) -> None:
        if not 0 < distance_threshold < 2:
            raise ValueError(f"distance_threshold must be in (0, 2), got {distance_threshold}")
        if max_questions < 1:
            raise ValueError(f"max_questions must be positive, got {max_questions}")
        self._store = store
        self._redis: Any = store.redis
        self._embedder = embedder
        self._retriever = retriever
        self._threshold = distance_threshold
        self._max = max_questions

    async def questions(self, since: date, until: date) -> list[GapQuestion]:
        """The gap questions of conversations started since..until, newest first, one per answer."""
        days = [(since + timedelta(d)).isoformat() for d in range((until - since).days + 1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.zrevrange(self._store.insights.day_key(day, "gaps"), 0, self._max - 1, withscores=True)
            replies = await pipe.execute()
        refs: list[tuple[float, str, str, str]] = []  # (time, kind, conversation, answer id or time)
        for reply in replies:
            for member, score in reply:
                kind, cid, target = member.decode().split("|", 2)
                if kind in GAP_KINDS:
                    refs.append((score, kind, cid, target))
        refs.sort(reverse=True)
        conversations = sorted({cid for _, _, cid, _ in refs})
        async with self._redis.pipeline(transaction=False) as pipe:
            for cid in conversations:
                pipe.lrange(self._store.key(cid, "messages"), 0, -1)
            raw = dict(zip(conversations, await pipe.execute(), strict=True))
        messages = {cid: [self._store.sealer.open(m) for m in raw[cid]] for cid in conversations if raw[cid]}
        found: dict[tuple[str, str], GapQuestion] = {}
        for when, kind, cid, target in refs:
            turn = _question_of(messages.get(cid, []), kind, target)
            if turn is None:
                continue  # the conversation expired or was erased, or there was no question before the request
            answer_id, text = turn
            question = found.setdefault((cid, answer_id), GapQuestion(text, cid, answer_id, when))
            question.kinds.add(kind)
            if len(found) >= self._max:
                break
        return list(found.values())

    async def groups(self, since: date, until: date, limit: int = 20, examples: int = 5) -> dict[str, Any]:
        """Gap questions grouped by meaning, largest group first, each with examples and the closest article."""
        questions = await self.questions(since, until)
        groups = await asyncio.to_thread(self._group, questions, limit, examples)
        return {"questions": len(questions), "groups": groups}

    def _group(self, questions: list[GapQuestion], limit: int, examples: int) -> list[dict[str, Any]]:
        if not questions:
            return []
        vectors = self._embedder.embed([q.text for q in questions])
        labels = np.zeros(len(questions), dtype=int)
        if len(questions) > 1:
            from sklearn.cluster import AgglomerativeClustering  # loaded on first use: the chat path never needs it

            clustering = AgglomerativeClustering(
                n_clusters=None, metric="cosine", linkage="average", distance_threshold=self._threshold
            )
            labels = clustering.fit_predict(vectors)
        members: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            members.setdefault(int(label), []).append(i)
        ordered = sorted(members.values(), key=lambda rows: (-len(rows), -max(questions[r].time for r in rows)))
        out = []
        for rows in ordered[:limit]:
            centre = vectors[rows].mean(axis=0)
            rows = sorted(rows, key=lambda r: -float(vectors[r] @ centre))  # most central first
            kinds = {k: sum(k in questions[r].kinds for r in rows) for k in GAP_KINDS}
            seen: set[str] = set()
            shown: list[dict[str, Any]] = []
            for r in rows:
                key = questions[r].text.casefold()
                if key not in seen and len(shown) < examples:
                    seen.add(key)
                    q = questions[r]
                    shown.append({"text": q.text, "conversation_id": q.conversation_id, "kinds": sorted(q.kinds)})
            out.append(
                {
                    "size": len(rows),
                    "kinds": {k: v for k, v in kinds.items() if v},
                    "examples": shown,
                    "article": self._closest_article(questions[rows[0]].text),
                }
            )
        return out

    def _closest_article(self, question: str) -> dict[str, Any] | None:
        result = self._retriever.search(question, k=1)
        if not result.passages:
            return None
        best = result.passages[0]
        return {
            "document_id": best.document_id,
            "title": best.title,
            "heading": best.chunk.heading,
            "url": best.url,
            "confidence": round(best.confidence, 4),
        }


def _question_of(messages: list[dict[str, Any]], kind: str, target: str) -> tuple[str, str] | None:
    """(answer id, question text) a gap reference points at.

    `not_sure` and `down` name the answer; `handoff` names the time the visitor asked for a
    person: the question is the last one the bot answered before then."""
    if kind == "handoff":
        before = float(target)
        answers = [
            i
            for i, m in enumerate(messages)
            if m.get("role") == "assistant" and m.get("path") not in _NOT_A_QUESTION and float(m.get("created", 0)) <= before
        ]
        if not answers:
            return None
        index = answers[-1]
    else:
        index = next((i for i, m in enumerate(messages) if m.get("id") == target), -1)
        if index < 0:
            return None
    question = next((m for m in reversed(messages[:index]) if m.get("role") == "user"), None)
    if question is None or not question.get("text"):
        return None
    return str(messages[index]["id"]), str(question["text"])
