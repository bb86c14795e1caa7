"""Whole-turn quality on labelled questions: right article cited, grounded, honest when unsure."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.assistant import AnswerPath, Assistant, TurnDone, TurnResult
from bot.grounding import split_sentences
from retrieval.lexical import STOPWORDS

_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_CITATION = re.compile(r"\s*\[\d+\]")


@dataclass(frozen=True, slots=True)
class LabelledTurn:
    question: str
    document_id: str | None  # None: the help center cannot answer it


@dataclass(slots=True)
class BotEvalReport:
    in_scope: int = 0
    out_of_scope: int = 0
    cited_right_article: int = 0
    answered: int = 0  # generated or fallback
    generated: int = 0
    fully_supported: int = 0  # answered turns whose every claimed sentence passes the independent check
    generated_supported: int = 0
    out_of_scope_not_sure: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    ttft_s: list[float] = field(default_factory=list)
    results: list[tuple[LabelledTurn, TurnResult]] = field(default_factory=list)

    def share(self, part: int, whole: int) -> float:
        return part / whole if whole else 0.0


def lexically_supported(sentence: str, evidence: str, min_share: float = 0.6) -> bool:
    """Independent of the turn's own (embedding) check: most content words occur in the evidence."""
    words = [w for w in _WORD.findall(_CITATION.sub("", sentence).lower()) if w not in STOPWORDS]
    vocabulary = set(_WORD.findall(evidence.lower()))
    return bool(words) and sum(w in vocabulary for w in words) / len(words) >= min_share


async def evaluate_turns(
    assistant: Assistant, items: Sequence[LabelledTurn], evidence_for: dict[str, str], concurrency: int = 8
) -> BotEvalReport:
    """Run each question as a fresh conversation, `concurrency` at a time (so the generator batches)."""
    report = BotEvalReport()
    gate = asyncio.Semaphore(concurrency)

    async def one(item: LabelledTurn) -> tuple[LabelledTurn, TurnResult]:
        async with gate:
            result = None
            async for event in assistant.respond(item.question):
                if isinstance(event, TurnDone):
                    result = event.result
            assert result is not None
            return item, result

    for item, result in await asyncio.gather(*(one(i) for i in items)):
        report.results.append((item, result))
        report.paths[result.path.value] += 1
        if result.time_to_first_token_s is not None:
            report.ttft_s.append(result.time_to_first_token_s)
        if item.document_id is None:
            report.out_of_scope += 1
            report.out_of_scope_not_sure += result.path is AnswerPath.NOT_SURE
            continue
        report.in_scope += 1
        if result.path in (AnswerPath.GENERATED, AnswerPath.FALLBACK):
            report.answered += 1
            report.cited_right_article += any(s.document_id == item.document_id for s in result.sources)
            evidence = " ".join(evidence_for.get(s.document_id, s.snippet) for s in result.sources)
            # A fallback's framing ("Here is what ... says in X:") is not a claim; its quote is.
            claims = split_sentences(result.quoted if result.path is AnswerPath.FALLBACK else result.answer)
            supported = all(lexically_supported(s, evidence) for s in claims)
            report.fully_supported += supported
            if result.path is AnswerPath.GENERATED:
                report.generated += 1
                report.generated_supported += supported
    return report
