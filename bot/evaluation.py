"""Whole-turn quality on labelled questions: what a customer would call wrong.

Each labelled turn (knowledge_base/samples/eval/turns.jsonl) has a kind (an ordinary
question, a contradiction trap, or out of scope), a split (tune or heldout), the key facts a
right answer contains, and patterns of the false answers a trap tempts. A turn is scored on:

- key facts present: every group of key facts has one of its strings in the answer;
- false statement: the answer matches a false-claim pattern, or states a sentence that is not
  the help center's own and that the cited articles do not carry (a word, name or number they
  lack, or the opposite polarity of the sentence closest to it) — a check on words and
  polarity, independent of the embedding guard the turn itself used;
- not sure: the bot said it is not sure (and offered a person);
- time to first text and the path it took.

Tune thresholds on the tuning split; report on the held-out one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.assistant import QUOTE_FRAMING, SECOND_QUOTE, AnswerPath, Assistant, TurnDone, TurnResult, standalone_query
from bot.grounding import split_sentences
from bot.prompt import HistoryTurn
from retrieval.lexical import STOPWORDS
from retrieval.types import ChunkRecord

_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_CITATION = re.compile(r"\s*\[\d+\]")
_MARKUP = re.compile(r"[*`_]+")
_NEGATION = re.compile(r"(?i)\b(not|never|no|cannot|can't|don't|doesn't|won't|isn't|aren't|without)\b|n't\b")
KINDS = ("answer", "trap", "out_of_scope")
SPLITS = ("tune", "heldout")


@dataclass(frozen=True, slots=True)
class LabelledTurn:
    question: str
    document_id: str | None  # None: the help center cannot answer it; "not sure" is right
    kind: str = "answer"
    split: str = "heldout"
    reference: str = ""
    key_facts: tuple[tuple[str, ...], ...] = ()
    false_claims: tuple[str, ...] = ()
    id: str = ""
    before: tuple[str, ...] = ()  # the visitor's earlier messages in the conversation: a follow-up

    @property
    def in_scope(self) -> bool:
        return self.document_id is not None

    @property
    def search_query(self) -> str:
        """What the assistant searches for: the question, joined to the earlier messages it follows."""
        return standalone_query(self.question, [HistoryTurn("user", m) for m in self.before])


def load_turns(path: Path) -> list[LabelledTurn]:
    """Labelled turns from JSONL; lines of the older {question, document_id} form load too."""
    turns: list[LabelledTurn] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            kind = str(row.get("kind") or ("answer" if row.get("document_id") else "out_of_scope"))
            split = str(row.get("split", "heldout"))
            if kind not in KINDS or split not in SPLITS:
                raise ValueError(f"kind must be one of {KINDS} and split one of {SPLITS}")
            for pattern in row.get("false_claims", []):
                re.compile(pattern)
            turns.append(
                LabelledTurn(
                    question=str(row["question"]),
                    document_id=row.get("document_id"),
                    kind=kind,
                    split=split,
                    reference=str(row.get("reference", "")),
                    key_facts=tuple(tuple(str(a) for a in group) for group in row.get("key_facts", [])),
                    false_claims=tuple(str(p) for p in row.get("false_claims", [])),
                    id=str(row.get("id", line_no)),
                    before=tuple(str(m) for m in row.get("before", [])),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, re.error) as exc:
            raise ValueError(f"{path}:{line_no}: not a labelled turn: {exc}") from None
    return turns


def normalise(text: str) -> str:
    return " ".join(_MARKUP.sub("", text).lower().split())


def first_quote(answer: str) -> str:
    """An answer up to its second quote, from another article or section: a paragraph that
    starts "And from" or "And in the same article"."""
    return SECOND_QUOTE.split(answer, maxsplit=1)[0]


def has_key_facts(answer: str, groups: Sequence[Sequence[str]]) -> bool:
    text = normalise(answer)
    return bool(groups) and all(any(normalise(alt) in text for alt in group) for group in groups)


def unsupported_sentences(claims: Sequence[str], evidence: str) -> list[str]:
    """Claimed sentences the evidence does not carry: not quoted from it, and with a content word
    it lacks, or the opposite polarity of its closest sentence (by shared words)."""
    source = normalise(evidence)
    vocabulary = set(_WORD.findall(source))
    sentences = split_sentences(evidence)
    wrong = []
    for claim in claims:
        text = normalise(_CITATION.sub("", claim)).rstrip(".!?")
        if not text or text in source:
            continue
        words = [w for w in _WORD.findall(text) if w not in STOPWORDS]
        if any(w not in vocabulary for w in words):
            wrong.append(claim)
            continue
        closest = max(sentences, key=lambda s: len(set(words) & set(_WORD.findall(normalise(s)))), default="")
        if bool(_NEGATION.search(claim)) != bool(_NEGATION.search(closest)):
            wrong.append(claim)
    return wrong


@dataclass(slots=True)
class TurnScore:
    turn: LabelledTurn
    result: TurnResult
    key_facts: bool
    false_statement: bool
    not_sure: bool
    why_false: list[str] = field(default_factory=list)

    @property
    def key_facts_first(self) -> bool:
        """The key facts are in what the visitor reads first: the answer up to a second article's
        or section's quote ("And from ...", "And in the same article ..."), if it has one."""
        return self.key_facts and has_key_facts(first_quote(self.result.answer), self.turn.key_facts)

    @property
    def suggested(self) -> bool:
        """Not sure, but with the closest passage of the help center quoted."""
        return self.not_sure and bool(self.result.quoted)

    @property
    def correct(self) -> bool:
        if not self.turn.in_scope:
            return self.not_sure and not self.false_statement
        return self.key_facts and not self.false_statement


def _says(pattern: str, answer: str) -> bool:
    """Whether the answer says what `pattern` describes, anywhere in it or at the start of any
    line, once each quote's framing is taken off. 'From our article "Can I use the app on a
    tablet?": Yes, on iPads with iPadOS 16' says "yes" to a visitor on iPadOS 15, which a
    pattern anchored at the answer's start would miss. The framing's title is no claim: 'And
    from "Does the kettle work with Apple Home or Matter?": Matter support ... is planned' does
    not say that it works with Apple Home."""
    return bool(re.search(pattern, QUOTE_FRAMING.sub("\n", answer), re.IGNORECASE | re.MULTILINE))


def score_turn(turn: LabelledTurn, result: TurnResult, evidence_for: dict[str, str]) -> TurnScore:
    not_sure = result.path in (AnswerPath.NOT_SURE, AnswerPath.HUMAN)
    why: list[str] = []
    answered = result.path not in (AnswerPath.NOT_SURE, AnswerPath.HUMAN, AnswerPath.ERROR)
    # A "not sure" that quotes the closest passage says something too, and is checked the same way.
    if answered or result.quoted:
        why += [f"false claim /{p}/" for p in turn.false_claims if _says(p, result.answer)]
        # The framing of a quote ("From our article ...") is not a claim; the quote is. Each line
        # is a claim of its own: a list item without a full stop, then the next article's quote,
        # read as one sentence that no article holds.
        said = result.quoted or result.answer
        claims = [sentence for line in said.splitlines() for sentence in split_sentences(line)]
        evidence = " ".join(evidence_for.get(s.document_id, s.snippet) for s in result.sources)
        why += [f"unsupported: {s}" for s in unsupported_sentences(claims, evidence)]
    return TurnScore(turn, result, has_key_facts(result.answer, turn.key_facts), bool(why), not_sure, why)


@dataclass(slots=True)
class BotEvalReport:
    mode: str
    scores: list[TurnScore] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The figures a gate compares: shares over their own denominators, and counts."""
        in_scope = [s for s in self.scores if s.turn.in_scope]
        out = [s for s in self.scores if not s.turn.in_scope]
        traps = [s for s in self.scores if s.turn.kind == "trap"]
        answered = [s for s in self.scores if not s.not_sure and s.result.path is not AnswerPath.ERROR]
        speaking = answered + [s for s in self.scores if s.suggested]
        ttft = sorted(s.result.time_to_first_token_s for s in self.scores if s.result.time_to_first_token_s is not None)
        follow = [s for s in self.scores if s.turn.before]
        return {
            "mode": self.mode,
            "questions": len(self.scores),
            "in_scope": len(in_scope),
            "key_facts_present": _share(sum(s.key_facts for s in in_scope), len(in_scope)),
            # The same, counting only answers the bot was sure of (no "not sure" before the quote).
            "key_facts_sure": _share(sum(s.key_facts and not s.not_sure for s in in_scope), len(in_scope)),
            # The same, counting only the first article quoted: what a visitor reads first.
            "key_facts_first": _share(sum(s.key_facts_first for s in in_scope), len(in_scope)),
            "answers": len(answered),
            "suggestions": len(speaking) - len(answered),
            "in_scope_suggested": _share(sum(s.suggested for s in in_scope), len(in_scope)),
            "out_of_scope_suggested": _share(sum(s.suggested for s in out), len(out)),
            "false_statements": sum(s.false_statement for s in self.scores),
            "false_statement_rate": _share(sum(s.false_statement for s in speaking), len(speaking)),
            "traps": len(traps),
            "trap_failures": sum(s.false_statement for s in traps),
            "out_of_scope": len(out),
            "out_of_scope_not_sure": _share(sum(s.not_sure for s in out), len(out)),
            "in_scope_not_sure": _share(sum(s.not_sure for s in in_scope), len(in_scope)),
            "ttft_p50_s": _quantile(ttft, 0.5),
            "ttft_p95_s": _quantile(ttft, 0.95),
            "paths": dict(Counter(s.result.path.value for s in self.scores)),
            # Turns asked after earlier messages of the same conversation ("and to canada?").
            "follow_ups": len(follow),
            "follow_up_key_facts_present": _share(
                sum(s.key_facts for s in follow if s.turn.in_scope), sum(s.turn.in_scope for s in follow)
            ),
        }

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "id": s.turn.id,
                "kind": s.turn.kind,
                "question": s.turn.question,
                "before": list(s.turn.before),
                "path": s.result.path.value,
                "key_facts": s.key_facts,
                "key_facts_first": s.key_facts_first,
                "false_statement": s.false_statement,
                "not_sure": s.not_sure,
                "suggested": s.suggested,
                "why_false": s.why_false,
                "ttft_s": s.result.time_to_first_token_s,
                "answer": s.result.answer,
                "sources": [x.document_id for x in s.result.sources],
            }
            for s in self.scores
        ]


def evidence_by_document(chunks: Iterable[ChunkRecord]) -> dict[str, str]:
    """Each document's text, its chunks joined: what a claim is checked against (`score_turn`)."""
    evidence: dict[str, str] = {}
    for chunk in chunks:
        evidence[chunk.document_id] = evidence.get(chunk.document_id, "") + " " + chunk.text
    return evidence


async def answer_once(assistant: Assistant, message: str, history: Sequence[HistoryTurn] = ()) -> TurnResult:
    """The assistant's finished turn for `message` after `history`."""
    started = time.perf_counter()
    async for event in assistant.respond(message, history):
        if isinstance(event, TurnDone):
            return event.result
    raise AssertionError(f"no TurnDone for {message!r} after {time.perf_counter() - started:.1f} s")


async def played_out(assistant: Assistant, earlier: Sequence[str]) -> list[HistoryTurn]:
    """The conversation a follow-up is asked in: the visitor's `earlier` messages, each with
    the bot's own answer, as the visitor would have had them."""
    history: list[HistoryTurn] = []
    for message in earlier:
        reply = await answer_once(assistant, message, history)
        history += [HistoryTurn("user", message), HistoryTurn("assistant", reply.answer)]
    return history


async def evaluate_turns(
    assistant: Assistant, items: Sequence[LabelledTurn], evidence_for: dict[str, str], concurrency: int = 8
) -> BotEvalReport:
    """Run each question as a fresh conversation, `concurrency` at a time (so the generator batches)."""
    report = BotEvalReport(assistant.mode.value)
    gate = asyncio.Semaphore(concurrency)

    async def one(item: LabelledTurn) -> TurnScore:
        async with gate:
            history = await played_out(assistant, item.before)
            return score_turn(item, await answer_once(assistant, item.question, history), evidence_for)

    report.scores = list(await asyncio.gather(*(one(i) for i in items)))
    return report


def write_report(path: Path, reports: Sequence[BotEvalReport], meta: dict[str, Any]) -> None:
    """One JSON file with each mode's summary and per-question rows, for gates and diffs."""
    payload = {**meta, "summaries": [r.summary() for r in reports], "questions": {r.mode: r.rows() for r in reports}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)
