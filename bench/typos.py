"""Answers to questions as visitors type them: with typos, with and without fixing them.

Every single-message question of a split of the labelled set (knowledge_base/samples/eval/
turns.jsonl) gets one typo in each of up to `--words` of its words of five letters or more:
a letter dropped, doubled, swapped with the next or replaced by a keyboard neighbour, never
the first (seeded, so every run makes the same typos). The composer answers the typed
questions once with typo fixing off (the baseline, as before it existed) and once on, and
the clean questions with it on (nothing should move there), in one run on one index:

    HF_HUB_OFFLINE=1 SUPPORTBOT_DATA_DIR=... .venv/bin/python -m bench.typos --split tune

Out-of-scope questions get typos too: fixing them must not turn "not sure" into an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
from pathlib import Path
from typing import Any

from bot.assistant import AnswerMode
from bot.evaluation import LabelledTurn, evaluate_turns, evidence_by_document, load_turns
from knowledge_base.components import build_embedder, build_retriever
from server.components import build_assistant
from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EVAL_TURNS = REPO / "knowledge_base" / "samples" / "eval" / "turns.jsonl"
_WORD = re.compile(r"[A-Za-z]{5,}")
# Neighbours on a QWERTY keyboard: the letter a finger hits instead.
_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_NEIGHBOURS = {c: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)) for row in _ROWS for i, c in enumerate(row)}


def typo(word: str, rng: random.Random) -> str:
    """One edit of `word`, never at its first letter."""
    i = rng.randrange(1, len(word))
    kind = rng.choice(["drop", "double", "swap", "neighbour"])
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap" and i + 1 < len(word) and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    near = _NEIGHBOURS.get(word[i].lower(), "")
    return word[:i] + rng.choice(near) + word[i + 1 :] if near else word[:i] + word[i + 1 :]


def typed(question: str, rng: random.Random, words: int) -> str:
    candidates = [m for m in _WORD.finditer(question)]
    chosen = sorted(rng.sample(candidates, min(words, len(candidates))), key=lambda m: m.start(), reverse=True)
    for match in chosen:
        question = question[: match.start()] + typo(match.group(0), rng) + question[match.end() :]
    return question


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=["tune", "heldout", "all"])
    parser.add_argument("--questions", type=Path, default=EVAL_TURNS)
    parser.add_argument("--words", type=int, default=1, help="typos per question, each in another word")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "typos.json")
    args = parser.parse_args()
    settings = Settings()
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    rng = random.Random(args.seed)
    clean = [t for t in load_turns(args.questions) if (args.split == "all" or t.split == args.split) and not t.before]
    misspelt = [dataclasses.replace(t, question=typed(t.question, rng, args.words)) for t in clean]
    evidence = evidence_by_document(retriever.snapshot.chunks)

    async def run(turns: list[LabelledTurn], fix: bool) -> dict[str, Any]:
        assistant = build_assistant(
            settings.model_copy(update={"answer_fix_typos": fix}), retriever, embedder, None, mode=AnswerMode.EXTRACTIVE
        )
        await asyncio.to_thread(assistant.warm_up)
        report = await evaluate_turns(assistant, turns, evidence, concurrency=1)
        return {"summary": report.summary(), "rows": report.rows()}

    runs = {
        "typed, not fixed (baseline)": asyncio.run(run(misspelt, False)),
        "typed, fixed": asyncio.run(run(misspelt, True)),
        "clean, fixed": asyncio.run(run(clean, True)),
    }
    keys = ["key_facts_present", "key_facts_sure", "false_statements", "trap_failures", "out_of_scope_not_sure"]
    print(f"{len(clean)} single-message questions ({args.split} split), {args.words} typo(s) each, seed {args.seed}")
    print(f"{'':<32}" + "".join(f"{k:>24}" for k in keys))
    for name, result in runs.items():
        print(f"{name:<32}" + "".join(f"{result['summary'][k]!s:>24}" for k in keys))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"questions": [t.question for t in misspelt], "runs": runs}, indent=1, default=str) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
