"""Why a labelled question's key fact is missing from the composer's answer, question by question.

    HF_HUB_OFFLINE=1 SUPPORTBOT_DATA_DIR=... .venv/bin/python bench/answer_misses.py --split tune

Each in-scope turn of the split gets one cause, the first that holds:

- ok: the answer has the key facts;
- gated: the composer's answer had them, but the not-sure gate declined it;
- miss@k: no retrieved chunk of the top k (the answer's passages) holds them (miss@10 when
  none of the top 10 does either);
- wrong article: a chunk of the top k holds them, but the answer quotes other articles;
- wrong sentence: the quoted article's chunk holds them, but not the quoted sentences.

Out-of-scope turns are counted as declined or answered. Use it on the tuning split: it is
for choosing what to fix, and the thresholds it reflects were fitted there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.assistant import AnswerMode, TurnResult  # noqa: E402
from bot.evaluation import has_key_facts, load_turns, played_out  # noqa: E402
from knowledge_base.components import build_embedder, build_retriever  # noqa: E402
from server.components import build_assistant  # noqa: E402
from server.settings import Settings  # noqa: E402

EVAL_TURNS = ROOT / "knowledge_base" / "samples" / "eval" / "turns.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=["tune", "heldout", "all"])
    parser.add_argument("--questions", type=Path, default=EVAL_TURNS)
    parser.add_argument("--output", type=Path, help="per-question rows as JSON")
    parser.add_argument("--show", action="store_true", help="print every turn that is not ok")
    args = parser.parse_args()
    settings = Settings()
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    bot = build_assistant(settings, retriever, embedder, None, mode=AnswerMode.EXTRACTIVE, first_text_deadline=False)
    bot.warm_up()
    k = settings.answer_top_k
    causes: Counter[str] = Counter()
    rows = []
    for turn in load_turns(args.questions):
        if args.split != "all" and turn.split != args.split:
            continue
        wide = retriever.search(turn.search_query, max(10, k))
        # A follow-up is asked after the conversation before it, the bot's own answers included.
        _, lookup = bot.look_up(turn.question, asyncio.run(played_out(bot, turn.before)))
        search, composition = lookup.search, lookup.composition
        answered = bot._answerable(lookup, bot._gate_score(lookup))
        result = TurnResult(turn.question, turn.search_query)
        if composition is not None:
            bot._compose(result, composition, "")
        if not turn.in_scope:
            cause = "out of scope: answered" if answered else "out of scope: declined"
        else:
            holding = [p for p in search.passages if has_key_facts(f"{p.title} {p.text}", turn.key_facts)]
            if composition is not None and has_key_facts(result.answer, turn.key_facts):
                cause = "ok" if answered else "gated"
            elif not holding:
                in_wide = any(has_key_facts(f"{p.title} {p.text}", turn.key_facts) for p in wide.passages)
                cause = f"miss@{k}" if in_wide else f"miss@{len(wide.passages)}"
            elif composition is None or not any(p in holding for p in composition.passages):
                cause = "wrong article"
            else:
                cause = "wrong sentence"
        causes[cause] += 1
        rows.append(
            {
                "id": turn.id,
                "question": turn.question,
                "document_id": turn.document_id,
                "cause": cause,
                "retrieved": [p.document_id for p in wide.passages],
                "quoted": [p.document_id for p in composition.passages] if composition else [],
                "relevance": composition.relevance if composition else None,
                "confidence": round(search.confidence, 4),
                "unknown_words": lookup.unknown,
                "name_words": sorted(bot.name_words(turn.question)),
                "answer": result.answer,
            }
        )
        if args.show and cause not in ("ok", "out of scope: declined"):
            print(f"[{cause}] {turn.question!r} -> {result.answer[:160]!r}")
    in_scope = sum(n for c, n in causes.items() if not c.startswith("out of scope"))
    print(f"{args.split} split, index {retriever.snapshot.version}, top {k}: {in_scope} in scope")
    for cause, n in causes.most_common():
        print(f"  {cause:<24} {n}")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
