"""Retrieval quality on the sample help center for each fusion method, against dense-only.

Two question sets: the labelled natural-language questions (knowledge_base/samples/eval)
and exact-code queries (error codes, SKUs), where lexical matching is meant to help.
Also reports how well confidence separates in-scope from out-of-scope questions.

    .venv/bin/python bench/retrieval_quality.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.evaluation import LabelledQuestion, evaluate_retrieval, load_questions
from retrieval.retriever import Retriever

REPO = Path(__file__).resolve().parent.parent
CODE_QUERIES = [
    ("E-307", "troubleshooting/error-codes"),
    ("PAY-409", "billing/failed-payments"),
    ("ACC-429", "accounts/reset-password"),
    ("what is BRW-F10", "shipping/filter-deliveries"),
    ("NET-503", "troubleshooting/app-crashes"),
    ("E-410", "troubleshooting/firmware-update-failed"),
    ("ACC-423 error", "accounts/login-problems"),
    ("PAY-402", "billing/failed-payments"),
    ("error E-102", "troubleshooting/error-codes"),
    ("BRWLO*CLUB on statement", "faq#why-does-my-bank-statement-say-brwlo"),
]
VARIANTS = {
    "dense only (baseline)": {"fusion": "blend", "lexical_weight": 0.0},
    "rrf": {"fusion": "rrf"},
    "blend 0.05": {"fusion": "blend", "lexical_weight": 0.05},
    "blend 0.1 (default)": {"fusion": "blend", "lexical_weight": 0.1},
    "blend 0.2": {"fusion": "blend", "lexical_weight": 0.2},
    "blend 0.3": {"fusion": "blend", "lexical_weight": 0.3},
}


def main() -> None:
    questions = load_questions(REPO / "knowledge_base" / "samples" / "eval" / "questions.jsonl")
    codes = [LabelledQuestion(q, d) for q, d in CODE_QUERIES]
    embedder = SentenceEmbedder()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        KnowledgeBaseBuilder(Path(tmp), embedder).ingest([REPO / "knowledge_base" / "samples" / "help-center"])
        for name, options in VARIANTS.items():
            retriever = Retriever(Path(tmp), embedder, **options)  # type: ignore[arg-type]
            natural = evaluate_retrieval(retriever, questions)
            exact = evaluate_retrieval(retriever, codes)
            rejected = sum(c < 0.5 for c in natural.out_of_scope_confidences) / max(natural.out_of_scope, 1)
            rows.append(
                {
                    "variant": name,
                    "recall@1": round(natural.recall(1), 3),
                    "recall@5": round(natural.recall(5), 3),
                    "mrr": round(natural.mrr, 3),
                    "codes recall@1": round(exact.recall(1), 3),
                    "out-of-scope conf<0.5": round(rejected, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    header = list(rows[0])
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")


if __name__ == "__main__":
    main()
