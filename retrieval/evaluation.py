"""Retrieval quality on labelled questions: recall@k, MRR, and confidence calibration data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.retriever import Retriever
from retrieval.types import SearchFilters


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    """A user question and the document that answers it (None: out of scope)."""

    question: str
    document_id: str | None

    @property
    def in_scope(self) -> bool:
        return self.document_id is not None


def load_questions(path: Path) -> list[LabelledQuestion]:
    questions: list[LabelledQuestion] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(LabelledQuestion(str(row["question"]), row.get("document_id")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f'{path}:{line_no}: expected {{"question": ..., "document_id": ...}}: {exc}') from None
    return questions


@dataclass(slots=True)
class RetrievalEvalReport:
    in_scope: int = 0
    out_of_scope: int = 0
    hits_at: dict[int, int] = field(default_factory=dict)
    reciprocal_ranks: list[float] = field(default_factory=list)
    misses: list[tuple[str, str, list[str]]] = field(default_factory=list)
    # (top cosine, top-1 correct) for every question: the data confidence is calibrated on.
    calibration_points: list[tuple[float, bool]] = field(default_factory=list)
    out_of_scope_confidences: list[float] = field(default_factory=list)

    def recall(self, k: int) -> float:
        return self.hits_at.get(k, 0) / self.in_scope if self.in_scope else 0.0

    @property
    def mrr(self) -> float:
        return sum(self.reciprocal_ranks) / self.in_scope if self.in_scope else 0.0


def evaluate_retrieval(
    retriever: Retriever, questions: list[LabelledQuestion], k: int = 10, cutoffs: tuple[int, ...] = (1, 5, 10)
) -> RetrievalEvalReport:
    """Rank = position of the first passage from the right document among the top k passages."""
    report = RetrievalEvalReport(hits_at=dict.fromkeys(cutoffs, 0))
    for item in questions:
        result = retriever.search(item.question, k=k, filters=SearchFilters.for_agents())
        ranked = [p.document_id for p in result.passages]
        top_cosine = max((p.dense_score for p in result.passages), default=0.0)
        if not item.in_scope:
            report.out_of_scope += 1
            report.calibration_points.append((top_cosine, False))
            report.out_of_scope_confidences.append(result.confidence)
            continue
        report.in_scope += 1
        rank = next((i for i, doc in enumerate(ranked, start=1) if doc == item.document_id), None)
        report.calibration_points.append((top_cosine, rank == 1))
        report.reciprocal_ranks.append(1.0 / rank if rank else 0.0)
        for cutoff in cutoffs:
            if rank is not None and rank <= cutoff:
                report.hits_at[cutoff] += 1
        if rank is None or rank > 5:
            report.misses.append((item.question, str(item.document_id), ranked[:5]))
    return report
