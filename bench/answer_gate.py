"""The not-sure gate's trade-off on a split: key facts against out-of-scope questions answered.

    HF_HUB_OFFLINE=1 SUPPORTBOT_DATA_DIR=... .venv/bin/python -m bench.answer_gate --split tune

Every turn of the split is searched and composed once, as the server would (a follow-up
after its conversation is played out; the settings' composer and vetoes: retrieval
confidence, another company's account, the unknown-word limit, which leaves a suggestion at
most); then, without searching again, it reports:

- the settings' own gate: in-scope turns answered with their key facts, out-of-scope
  turns answered, turns whose answer or quoted suggestion matches a false claim;
- the frontier: for each number of out-of-scope turns answered, the most in-scope turns
  answered with their key facts over a grid of the relevance cut-off and the unknown-word
  and name-word penalties (configurations with a false claim left out);
- the suggestion band: for floors below the cut-off, the in-scope turns whose quoted
  suggestion holds the key facts, and the out-of-scope turns that would get a quote;
- with `--folds N`, cross-validation within the split: N random halvings; on each half the
  gate is fitted (most key facts with at most `--max-out-of-scope-share` of its out-of-scope
  turns answered, no false claim) and scored on the other half. A change that moves the
  frontier only by fitting a few turns shows no gain here.

It is for fitting the gate, so use it on the tuning split (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path

from bot.assistant import AnswerMode, TurnResult
from bot.evaluation import has_key_facts, load_turns, played_out
from knowledge_base.components import build_embedder, build_retriever
from server.components import build_assistant
from server.settings import Settings

EVAL_TURNS = Path(__file__).resolve().parent.parent / "knowledge_base" / "samples" / "eval" / "turns.jsonl"
CUT_OFFS = [round(0.90 + 0.01 * i, 2) for i in range(50)]
UNKNOWN_PENALTIES = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)
NAME_PENALTIES = (0.2, 0.35, 0.5, 0.75)
BAND_FLOORS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


@dataclass(frozen=True, slots=True)
class Row:
    in_scope: bool
    relevance: float | None  # the best sentence's score; None: vetoed whatever the cut-off
    unknown: int
    names: int
    key_facts: bool  # the composed text (answer or suggestion) holds the key facts
    false: bool  # ... matches a false claim of the turn
    may_be_sure: bool  # not too many words the help center never uses (else a suggestion at most)

    def score(self, unknown_penalty: float, name_penalty: float) -> float | None:
        if self.relevance is None:
            return None
        return self.relevance - unknown_penalty * self.unknown - name_penalty * self.names


def measure(split: str, questions: Path) -> tuple[list[Row], Settings]:
    settings = Settings()
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    bot = build_assistant(settings, retriever, embedder, None, mode=AnswerMode.EXTRACTIVE, first_text_deadline=False)
    bot.warm_up()
    rows = []
    for turn in load_turns(questions):
        if split != "all" and turn.split != split:
            continue
        # A follow-up is asked after the conversation before it, the bot's own answers included.
        _, lookup = bot.look_up(turn.question, asyncio.run(played_out(bot, turn.before)))
        composition, unknown, names = lookup.composition, lookup.unknown, lookup.names
        # The vetoes, with no penalty and no cut-off: None exactly when nothing may be quoted.
        vetoed = bot._gate_score(lookup) is None
        result = TurnResult(turn.question, turn.search_query)
        if composition is not None:
            bot._compose(result, composition, "")
        rows.append(
            Row(
                turn.in_scope,
                None if vetoed or composition is None else composition.relevance,
                unknown,
                names,
                composition is not None and has_key_facts(result.answer, turn.key_facts),
                composition is not None and any(re.search(p, result.answer, re.IGNORECASE) for p in turn.false_claims),
                bot._may_be_sure(lookup),
            )
        )
    return rows, settings


def gate(rows: list[Row], cut_off: float, unknown_penalty: float, name_penalty: float) -> tuple[int, int, int]:
    """(in-scope answered with key facts, out-of-scope answered, answered with a false claim)."""
    answered = [r for r in rows if r.may_be_sure and (s := r.score(unknown_penalty, name_penalty)) is not None and s >= cut_off]
    return (
        sum(r.in_scope and r.key_facts for r in answered),
        sum(not r.in_scope for r in answered),
        sum(r.false for r in answered),
    )


def fit(rows: list[Row], max_out_share: float) -> tuple[float, float, float] | None:
    """The grid's gate with the most key facts answering at most `max_out_share` of the
    out-of-scope turns and no false claim (ties: fewer out of scope answered)."""
    allowed = max_out_share * sum(not r.in_scope for r in rows)
    best: tuple[tuple[int, int], tuple[float, float, float]] | None = None
    for c, u, n in itertools.product(CUT_OFFS, UNKNOWN_PENALTIES, NAME_PENALTIES):
        got, oa, fa = gate(rows, c, u, n)
        if fa or oa > allowed:
            continue
        if best is None or (got, -oa) > best[0]:
            best = ((got, -oa), (c, u, n))
    return best[1] if best else None


def cross_validate(rows: list[Row], folds: int, max_out_share: float) -> tuple[int, int, int, int]:
    """(key facts, in scope, out of scope answered, out of scope) summed over the held-out
    halves of `folds` random halvings, each half fitted on the other."""
    totals = [0, 0, 0, 0]
    for seed in range(folds):
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        halves = [rows[i] for i in order[::2]], [rows[i] for i in order[1::2]]
        for train, test in (halves, halves[::-1]):
            fitted = fit(train, max_out_share)
            if fitted is None:
                continue
            got, oa, _ = gate(test, *fitted)
            totals[0] += got
            totals[1] += sum(r.in_scope for r in test)
            totals[2] += oa
            totals[3] += sum(not r.in_scope for r in test)
    return totals[0], totals[1], totals[2], totals[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=["tune", "heldout", "all"])
    parser.add_argument("--questions", type=Path, default=EVAL_TURNS)
    parser.add_argument("--max-out-of-scope", type=int, default=8, help="frontier rows up to this many answered")
    parser.add_argument("--folds", type=int, default=0, help="cross-validate the fitted gate over this many halvings")
    parser.add_argument("--max-out-of-scope-share", type=float, default=0.05, help="the fitted gate's limit (--folds)")
    args = parser.parse_args()
    rows, settings = measure(args.split, args.questions)
    in_scope, out = sum(r.in_scope for r in rows), sum(not r.in_scope for r in rows)
    cut, up, npen = settings.answer_relevance_threshold, settings.answer_unknown_word_penalty, settings.answer_name_word_penalty
    ok, answered_out, false = gate(rows, cut, up, npen)
    print(f"{args.split} split: {in_scope} in scope, {out} out of scope")
    print(f"settings (cut-off {cut}, unknown-word penalty {up}, name-word penalty {npen}):")
    print(f"  key facts {ok}/{in_scope} ({ok / in_scope:.3f}), out of scope answered {answered_out}/{out}, false {false}")

    best: dict[int, tuple[int, float, float, float]] = {}
    for c, u, n in itertools.product(CUT_OFFS, UNKNOWN_PENALTIES, NAME_PENALTIES):
        got, oa, fa = gate(rows, c, u, n)
        if not fa and (oa not in best or got > best[oa][0]):
            best[oa] = (got, c, u, n)
    print("frontier: out of scope answered -> most key facts (cut-off, unknown-word, name-word penalty)")
    for oa in sorted(k for k in best if k <= args.max_out_of_scope):
        got, c, u, n = best[oa]
        print(f"  {oa:3d} -> {got}/{in_scope} ({got / in_scope:.3f})  ({c}, {u}, {n})")

    print(f"suggestion band below the cut-off {cut} (key facts counting suggestions; quotes given to out-of-scope turns):")
    for floor in BAND_FLOORS:
        band = [r for r in rows if (s := r.score(up, npen)) is not None and floor <= s and (s < cut or not r.may_be_sure)]
        facts = ok + sum(r.in_scope and r.key_facts for r in band)
        quoted_out = sum(not r.in_scope for r in band)
        print(
            f"  floor {floor}: key facts {facts}/{in_scope} ({facts / in_scope:.3f}), false in band "
            f"{sum(r.false for r in band)}, out of scope quoted {quoted_out}/{out}"
        )
    if args.folds:
        got, scope, oa, out_total = cross_validate(rows, args.folds, args.max_out_of_scope_share)
        print(
            f"cross-validated over {args.folds} halvings (fitted to at most {args.max_out_of_scope_share:.0%} out of "
            f"scope answered): key facts {got}/{scope} ({got / scope:.3f}), out of scope answered {oa}/{out_total} "
            f"({oa / out_total:.3f})"
        )


if __name__ == "__main__":
    main()
