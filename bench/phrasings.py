"""The labelled questions as visitors wrap them: answered as well as the bare question?

Every single-message question of a split of the labelled set (knowledge_base/samples/eval/
turns.jsonl) is asked by the composer as written (the baseline) and in each of the ways a
visitor wraps a question, in one run on one index:

- a greeting before it ("Hi! "), or "hey quick question - ";
- thanks after it (" Thanks!"), or "please" at its end;
- "can you help me? " before it;
- a sentence of context before it ("I bought a Brewlo kettle last month. "), or a lead-in with
  a colon ("I have a question about my kettle: "), or thanks for the last answer and "One more
  thing: ";
- in one message with another in-scope question of the split, drawn at random, before or
  after it ("can i return my kettle? how long does the refund take?"): its own key facts must
  still be in the answer;
- asked second: after another in-scope question of the split, drawn at random (seeded, so
  every run asks the same pairs), with the bot's answer to it in between. The labelled
  follow-ups (which need the question before them) are `bot eval`'s; this is the question
  that only reads like one ("theres a little lock symbol on the kettle and it wont do
  anything" after a question about spare lids).

None of these changes what is asked, so none should change the key facts or an out-of-scope
question's "not sure".

    HF_HUB_OFFLINE=1 SUPPORTBOT_DATA_DIR=... .venv/bin/python -m bench.phrasings --split tune
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
from collections.abc import Callable
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
BASELINE = "as written (baseline)"


def worded(change: Callable[[str], str]) -> Callable[[list[LabelledTurn], random.Random], list[LabelledTurn]]:
    return lambda turns, _: [dataclasses.replace(t, question=change(t.question)) for t in turns]


def after_another(turns: list[LabelledTurn], rng: random.Random) -> list[LabelledTurn]:
    """Each turn asked after a different in-scope question of `turns`."""
    openers = [t for t in turns if t.in_scope]
    paired = []
    for turn in turns:
        opener = rng.choice([t for t in openers if t.question != turn.question])
        paired.append(dataclasses.replace(turn, before=(opener.question,)))
    return paired


def with_another(after: bool) -> Callable[[list[LabelledTurn], random.Random], list[LabelledTurn]]:
    """Each turn asked in one message with a different in-scope question of `turns`, before or after it."""

    def wrap(turns: list[LabelledTurn], rng: random.Random) -> list[LabelledTurn]:
        openers = [t for t in turns if t.in_scope and not t.before]
        out = []
        for turn in turns:
            other = rng.choice([t for t in openers if t.question != turn.question]).question.rstrip("?")
            question = turn.question.rstrip("?")
            out.append(dataclasses.replace(turn, question=f"{question}? {other}?" if after else f"{other}? {question}?"))
        return out

    return wrap


# Where the labelled question stands in a message of two: an answer that names it as not found is "not sure" of it.
PLACES = {"another question before it": "second", "another question after it": "first"}
WRAPPINGS: dict[str, Callable[[list[LabelledTurn], random.Random], list[LabelledTurn]]] = {
    BASELINE: worded(lambda q: q),
    "greeting before": worded(lambda q: f"Hi! {q}"),
    "'hey quick question - '": worded(lambda q: f"hey quick question - {q}"),
    "thanks after": worded(lambda q: f"{q} Thanks!"),
    "'please' at the end": worded(lambda q: f"{q.rstrip('?')} please?"),
    "'can you help me? ' before": worded(lambda q: f"can you help me? {q}"),
    "context sentence before": worded(lambda q: f"I bought a Brewlo kettle last month. {q}"),
    "lead-in with a colon": worded(lambda q: f"I have a question about my kettle: {q}"),
    "after thanks, 'one more thing'": worded(lambda q: f"Thanks, that worked. One more thing: {q}"),
    "asked second": after_another,
    "another question before it": with_another(after=False),
    "another question after it": with_another(after=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=["tune", "heldout", "all"])
    parser.add_argument("--questions", type=Path, default=EVAL_TURNS)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "phrasings.json")
    args = parser.parse_args()
    settings = Settings()
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    bare = [t for t in load_turns(args.questions) if (args.split == "all" or t.split == args.split) and not t.before]
    evidence = evidence_by_document(retriever.snapshot.chunks)
    assistant = build_assistant(settings, retriever, embedder, None, mode=AnswerMode.EXTRACTIVE)
    assistant.warm_up()
    runs: dict[str, Any] = {}
    for name, wrap in WRAPPINGS.items():
        turns = wrap(bare, random.Random(args.seed))
        report = asyncio.run(evaluate_turns(assistant, turns, evidence, concurrency=1))
        runs[name] = {"summary": report.summary(), "rows": report.rows()}
        if name in PLACES:  # an out-of-scope question asked with another is "not sure" when its answer says so
            out = [r for r, t in zip(runs[name]["rows"], turns, strict=True) if not t.in_scope]
            named = re.compile(rf"\byour (?:\w+ and )*{PLACES[name]}(?: and \w+)* questions?\b")
            said = sum(r["not_sure"] or bool(named.search(r["answer"])) for r in out)
            runs[name]["summary"]["out_of_scope_not_sure"] = round(said / len(out), 4) if out else None
    print(f"{len(bare)} single-message questions ({args.split} split), seed {args.seed}")
    print(f"{'':<28}" + "".join(f"{k:>24}" for k in KEYS) + f"{'answers that differ':>22}")
    for name, result in runs.items():
        differ = sum(
            (a["key_facts"], a["not_sure"]) != (b["key_facts"], b["not_sure"])
            for a, b in zip(runs[BASELINE]["rows"], result["rows"], strict=True)
        )
        print(f"{name:<28}" + "".join(f"{result['summary'][k]!s:>24}" for k in KEYS) + f"{differ:>22}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
