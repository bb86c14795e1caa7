"""A visitor's second question: answered as well as if it were their first?

Every single-message question of a split of the labelled set (knowledge_base/samples/eval/
turns.jsonl) is asked twice by the composer, in one run on one index: first in a new
conversation (the baseline), then after another in-scope question of the same split, drawn
at random (seeded, so every run asks the same pairs), with the bot's answer to it in between.
An unrelated question before it must change nothing: not the key facts, not an out-of-scope
question's "not sure". The labelled follow-ups (which need the question before them) are
`bot eval`'s; this is the other half, the question that only reads like one ("theres a little
lock symbol on the kettle and it wont do anything" after a question about spare lids).

    HF_HUB_OFFLINE=1 SUPPORTBOT_DATA_DIR=... .venv/bin/python -m bench.second_question --split tune
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from bot.assistant import AnswerMode
from bot.evaluation import LabelledTurn, evaluate_turns, evidence_by_document, load_turns
from knowledge_base.components import build_embedder, build_retriever
from server.components import build_assistant
from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EVAL_TURNS = REPO / "knowledge_base" / "samples" / "eval" / "turns.jsonl"
KEYS = ["key_facts_present", "key_facts_sure", "false_statements", "trap_failures", "out_of_scope_not_sure"]


def after_another(turns: list[LabelledTurn], rng: random.Random) -> list[LabelledTurn]:
    """Each turn asked after a different in-scope question of `turns`."""
    openers = [t for t in turns if t.in_scope]
    paired = []
    for turn in turns:
        opener = rng.choice([t for t in openers if t.question != turn.question])
        paired.append(dataclasses.replace(turn, before=(opener.question,)))
    return paired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=["tune", "heldout", "all"])
    parser.add_argument("--questions", type=Path, default=EVAL_TURNS)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "second_question.json")
    args = parser.parse_args()
    settings = Settings()
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    first = [t for t in load_turns(args.questions) if (args.split == "all" or t.split == args.split) and not t.before]
    second = after_another(first, random.Random(args.seed))
    evidence = evidence_by_document(retriever.snapshot.chunks)
    assistant = build_assistant(settings, retriever, embedder, None, mode=AnswerMode.EXTRACTIVE)
    assistant.warm_up()

    async def run(turns: list[LabelledTurn]) -> dict[str, Any]:
        report = await evaluate_turns(assistant, turns, evidence, concurrency=1)
        return {"summary": report.summary(), "rows": report.rows()}

    runs = {"asked first (baseline)": asyncio.run(run(first)), "asked second": asyncio.run(run(second))}
    changed = [
        (turn.id, a["key_facts"], b["key_facts"], a["not_sure"], b["not_sure"])
        for turn, a, b in zip(first, runs["asked first (baseline)"]["rows"], runs["asked second"]["rows"], strict=True)
        if (a["key_facts"], a["not_sure"]) != (b["key_facts"], b["not_sure"])
    ]
    print(f"{len(first)} single-message questions ({args.split} split), each after another of them, seed {args.seed}")
    print(f"{'':<26}" + "".join(f"{k:>24}" for k in KEYS))
    for name, result in runs.items():
        print(f"{name:<26}" + "".join(f"{result['summary'][k]!s:>24}" for k in KEYS))
    print(f"{len(changed)} answers differ in key facts or 'not sure' (id, key facts first/second, not sure first/second):")
    for row in changed:
        print("  ", *row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"openers": [t.before[0] for t in second], "runs": runs}, indent=1, default=str) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
