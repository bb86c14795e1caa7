"""Training examples in exactly the prompt the server builds, and the split that keeps evaluation out.

Two sources of SFT examples, and one of preference pairs:

- feedback exports (`supportbot.sft.v1`, docs/datasets.md): up-rated answers and agents'
  corrections. Their question, history and passages are rebuilt into the server's prompt
  (`bot.prompt.PromptBuilder`), so a model trained on them sees what it will see when serving;
- preference exports (`supportbot.preference.v1`): an agent's correction (chosen) against the
  bot's answer (rejected), their prompt rebuilt the same way, for the DPO stage;
- the knowledge base: every public FAQ pair with the passages retrieval returns for its
  question, and every public article section with a question made from its heading and an
  answer made of the section's own first sentences. The answer's own passage is always among
  the passages (put first when retrieval missed it), so no example teaches an unsupported answer.

Evaluation questions never reach training: `EvalExclusion` drops every example or pair whose document
is a held-out evaluation document, and every example whose question is an evaluation question
(either split) or a near-duplicate of one. What it dropped is counted for the run's manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.evaluation import LabelledTurn, load_turns
from bot.grounding import split_sentences
from bot.prompt import HistoryTurn, PromptBuilder
from retrieval.lexical import STOPWORDS
from retrieval.retriever import Retriever
from retrieval.types import ChunkRecord, Passage, Visibility

SFT_SCHEMA = "supportbot.sft.v1"
PREFERENCE_SCHEMA = "supportbot.preference.v1"
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_FAQ = re.compile(r"(?s)^\s*Q:\s*(?P<q>.+?)\n\s*A:\s*(?P<a>.+?)\s*$")
NEAR_DUPLICATE = 0.8  # content-word Jaccard at or above this counts as the same question


class DatasetError(ValueError):
    """The training data cannot be used as given; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class TrainingExample:
    id: str
    source: str  # faq, article, feedback
    question: str
    document_id: str
    prompt: str
    completion: str


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One DPO pair: the server's prompt, the answer to prefer and the one to move away from."""

    id: str
    source: str  # preference
    question: str
    document_id: str
    prompt: str
    chosen: str
    rejected: str


@dataclass(slots=True)
class ExampleSet:
    examples: list[TrainingExample] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    exclusions: dict[str, Any] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(e.source for e in self.examples).items()))

    def pair_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.source for p in self.pairs).items()))

    def write_jsonl(self, path: Path) -> str:
        """The examples as prompt/completion JSONL (TRL's format); returns the file's sha256."""
        return _write_jsonl(path, self.examples)

    def write_pairs_jsonl(self, path: Path) -> str:
        """The pairs as prompt/chosen/rejected JSONL (TRL's preference format); returns the file's sha256."""
        return _write_jsonl(path, self.pairs)


def _write_jsonl(path: Path, items: Sequence[TrainingExample | PreferencePair]) -> str:
    data = "".join(json.dumps(asdict(item), ensure_ascii=False, sort_keys=True) + "\n" for item in items).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in STOPWORDS)


def normalise_question(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class EvalExclusion:
    """Which examples would leak evaluation into training: by document and by question."""

    def __init__(self, turns: Sequence[LabelledTurn], *, exclude_heldout_documents: bool = True) -> None:
        self.heldout_documents = (
            frozenset(t.document_id for t in turns if t.split == "heldout" and t.document_id is not None)
            if exclude_heldout_documents
            else frozenset()
        )
        self._questions = {normalise_question(t.question): t.id for t in turns}
        self._words = [(content_words(t.question), t.id) for t in turns]
        self.turns = len(turns)
        self.by_document: list[str] = []
        self.by_question: list[dict[str, str]] = []

    @classmethod
    def from_file(cls, path: Path, *, exclude_heldout_documents: bool = True) -> EvalExclusion:
        return cls(load_turns(path), exclude_heldout_documents=exclude_heldout_documents)

    def matching_turn(self, question: str) -> str | None:
        """The id of the evaluation turn `question` repeats (same words, or a near-duplicate), if any."""
        exact = self._questions.get(normalise_question(question))
        if exact is not None:
            return exact
        words = content_words(question)
        for other, turn_id in self._words:
            if words and other and len(words & other) / len(words | other) >= NEAR_DUPLICATE:
                return turn_id
        return None

    def admits(self, example_id: str, question: str, document_id: str) -> bool:
        if document_id in self.heldout_documents:
            self.by_document.append(example_id)
            return False
        turn = self.matching_turn(question)
        if turn is not None:
            self.by_question.append({"example": example_id, "eval_turn": turn})
            return False
        return True

    def summary(self, source: Path | None = None) -> dict[str, Any]:
        return {
            "eval_file": str(source) if source else None,
            "eval_turns": self.turns,
            "heldout_documents": sorted(self.heldout_documents),
            "near_duplicate_jaccard": NEAR_DUPLICATE,
            "excluded_by_document": sorted(self.by_document),
            "excluded_by_question": self.by_question,
        }


class ExampleBuilder:
    """Prompts exactly as the server builds them (`PromptBuilder`), within a token budget."""

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        company: str,
        max_length: int,
        format_chat: Callable[[list[dict[str, str]]], str | None] | None = None,
    ) -> None:
        if max_length < 64:
            raise ValueError(f"max_length must be at least 64 tokens, got {max_length}")
        self._count = count_tokens
        self._company = company
        self._format_chat = format_chat
        self.max_length = max_length

    def example(
        self,
        example_id: str,
        source: str,
        question: str,
        document_id: str,
        answer: str,
        passages: Sequence[Passage],
        history: Sequence[HistoryTurn] = (),
    ) -> TrainingExample | None:
        """None when the question and the answer alone do not fit `max_length`."""
        completion = " " + answer.strip()
        prompt = self._prompt(question, passages, history, self._count(completion))
        if prompt is None:
            return None
        return TrainingExample(example_id, source, question, document_id, prompt, completion)

    def pair(
        self,
        pair_id: str,
        source: str,
        question: str,
        document_id: str,
        chosen: str,
        rejected: str,
        passages: Sequence[Passage],
        history: Sequence[HistoryTurn] = (),
    ) -> PreferencePair | None:
        """None when the question and the longer of the two answers do not fit `max_length`.

        Both answers follow the same prompt, which is fitted to the longer one, so neither is cut."""
        chosen, rejected = " " + chosen.strip(), " " + rejected.strip()
        prompt = self._prompt(question, passages, history, max(self._count(chosen), self._count(rejected)))
        if prompt is None:
            return None
        return PreferencePair(pair_id, source, question, document_id, prompt, chosen, rejected)

    def _prompt(
        self, question: str, passages: Sequence[Passage], history: Sequence[HistoryTurn], completion_tokens: int
    ) -> str | None:
        # A fresh canary per example, as every server process has its own: the model learns the
        # line is there and never worth repeating, not one value.
        prompts = PromptBuilder(self._count, self._company, f"SB-CANARY-{secrets.token_hex(8)}", self._format_chat)
        answer_tokens = completion_tokens + 2  # BOS and EOS
        budget = self.max_length - answer_tokens
        for _ in range(4):
            # The builder counts its pieces apart; the joins between them cost a few tokens more.
            # Training truncates at max_length, which would cut the answer, so measure the whole.
            try:
                built = prompts.build(question, passages, history, budget)
            except ValueError:
                return None
            over = self._count(built.text) + answer_tokens - self.max_length
            if over <= 0:
                break
            budget -= over
        else:
            return None
        if not built.passages and passages:
            return None  # an answer without the passage it comes from teaches guessing
        return built.text


def passage_for(chunk: ChunkRecord) -> Passage:
    return Passage(chunk, 1.0, 1.0, 0.0, 1.0)


def with_own_passage(retrieved: Sequence[Passage], own: ChunkRecord, top_k: int) -> list[Passage]:
    """Retrieval's passages with the answer's own chunk among them (first when retrieval missed it)."""
    passages = list(retrieved[:top_k])
    if any(p.chunk.chunk_id == own.chunk_id for p in passages):
        return passages
    return [passage_for(own), *passages[: top_k - 1]]


def question_from_heading(title: str, heading: str) -> str:
    """A visitor's question about one section, in the short form visitors type ("Set up your
    Brewlo kettle: before you start?"); the heading itself when it already is a question."""
    heading, title = heading.strip().rstrip(":"), title.strip().rstrip("?")
    if heading.endswith("?"):
        return heading
    if not heading:
        return f"{title}?"
    return f"{title}: {heading[:1].lower() + heading[1:]}?"


def answer_from_section(text: str, cite: int, max_sentences: int = 3) -> str:
    sentences = [s for s in split_sentences(text) if len(s) > 2][:max_sentences]
    return f"{' '.join(sentences)} [{cite}]" if sentences else ""


def knowledge_base_examples(
    retriever: Retriever, builder: ExampleBuilder, exclusion: EvalExclusion, *, top_k: int, result: ExampleSet
) -> None:
    """FAQ pairs and article sections of the public knowledge base, as grounded examples."""
    for chunk in retriever.snapshot.chunks:
        if chunk.visibility is not Visibility.PUBLIC:
            result.skipped["internal"] += 1  # agents' articles never go into a model that visitors talk to
            continue
        if chunk.kind == "faq":
            match = _FAQ.match(chunk.text)
            if match is None:
                result.skipped["unparsed_faq"] += 1
                continue
            question, answer_text = match["q"].strip(), match["a"].strip()
            source = "faq"
        else:
            question, answer_text = question_from_heading(chunk.title, chunk.heading), chunk.text
            source = "article"
        example_id = f"{source}:{chunk.chunk_id}"
        if not exclusion.admits(example_id, question, chunk.document_id):
            continue
        passages = with_own_passage(retriever.search(question, k=top_k).passages, chunk, top_k)
        own = next(i for i, p in enumerate(passages, 1) if p.chunk.chunk_id == chunk.chunk_id)
        answer = f"{answer_text} [{own}]" if source == "faq" else answer_from_section(answer_text, own)
        if not answer:
            result.skipped["empty_answer"] += 1
            continue
        example = builder.example(example_id, source, question, chunk.document_id, answer, passages)
        if example is None:
            result.skipped["too_long"] += 1
        else:
            result.examples.append(example)


# Which flag reads which schema, for the error that names the right one.
_FLAG = {SFT_SCHEMA: "--feedback", PREFERENCE_SCHEMA: "--preferences"}
_FORMAT = {SFT_SCHEMA: "sft", PREFERENCE_SCHEMA: "preference"}


def read_export(path: Path, base_model: str, accepted_models: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """`supportbot.sft.v1` records of one export file, checked; DatasetError says what is wrong.

    A record's `model_id` must be the base model's id or one of `accepted_models` (candidates
    trained from that base): feedback on another model's answers teaches the wrong model."""
    return _read(path, SFT_SCHEMA, base_model, accepted_models)


def read_preferences(path: Path, base_model: str, accepted_models: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """`supportbot.preference.v1` pairs of one export file, checked as `read_export` checks SFT records."""
    return _read(path, PREFERENCE_SCHEMA, base_model, accepted_models)


def _read(path: Path, expected: str, base_model: str, accepted_models: frozenset[str]) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the export: {exc.strerror or exc}") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
        schema = record.get("schema") if isinstance(record, dict) else None
        if schema in _FLAG and schema != expected:
            kind = "pair" if schema == PREFERENCE_SCHEMA else "record"
            raise DatasetError(
                f"{where}: a {schema} {kind}; {_FLAG[expected]} reads {expected} exports "
                f"(`supportbot feedback export --format {_FORMAT[expected]}`): pass this file with {_FLAG[schema]}"
            )
        if schema != expected:
            raise DatasetError(f"{where}: schema {schema!r}, expected {expected} (docs/datasets.md)")
        model = record.get("model_id") or ""
        if model and model != base_model and model not in accepted_models:
            raise DatasetError(
                f"{where}: answer written by model {model!r}, but this run trains {base_model!r}; "
                "export feedback on this model's answers, or pass --base-model to train the one they came from"
            )
        if expected == SFT_SCHEMA:
            messages = record.get("messages")
            if not _messages(messages, 3) or messages[-1].get("role") != "assistant":
                raise DatasetError(f"{where}: `messages` must end with the user's question and the assistant's answer")
        else:
            if not _messages(record.get("prompt"), 2) or record["prompt"][-1].get("role") != "user":
                raise DatasetError(f"{where}: `prompt` must be the system message, any earlier turns and the user's question")
            for side in ("chosen", "rejected"):
                answer = record.get(side)
                if not _messages(answer, 1) or len(answer) != 1 or answer[0].get("role") != "assistant":
                    raise DatasetError(f"{where}: `{side}` must be one assistant message")
        records.append(record)
    if not records:
        raise DatasetError(f"{path}: the export is empty (no {expected} records): nothing to train on")
    return records


def _messages(value: Any, at_least: int) -> bool:
    """A list of at least `at_least` chat messages with string roles and contents."""
    return (
        isinstance(value, list)
        and len(value) >= at_least
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    )


def _conversation(
    messages: Sequence[dict[str, Any]], passages: Sequence[dict[str, Any]]
) -> tuple[list[HistoryTurn], list[ChunkRecord]]:
    """The earlier turns between a record's system message and its question, and its passages as chunks."""
    history = [HistoryTurn(str(m["role"]), str(m["content"])) for m in messages if m.get("role") in ("user", "assistant")]
    chunks = [
        ChunkRecord(
            i,
            f"feedback:{i}",
            str(p.get("document_id", "")),
            str(p.get("title", "")),
            str(p.get("heading", "")),
            str(p.get("text", "")),
            None,
            "feedback",
            Visibility.PUBLIC,
        )
        for i, p in enumerate(passages)
        if isinstance(p, dict)
    ]
    return history, chunks


def feedback_examples(
    records: Iterable[dict[str, Any]], builder: ExampleBuilder, exclusion: EvalExclusion, *, top_k: int, result: ExampleSet
) -> None:
    for record in records:
        messages = record["messages"]
        question, answer = str(messages[-2].get("content", "")), str(messages[-1].get("content", ""))
        history, chunks = _conversation(messages[1:-2], record.get("passages") or [])
        document = chunks[0].document_id if chunks else ""
        example_id = f"feedback:{record.get('id', '')}"
        if not question.strip() or not answer.strip():
            result.skipped["empty_feedback"] += 1
            continue
        if not exclusion.admits(example_id, question, document):
            continue
        example = builder.example(
            example_id, "feedback", question, document, answer, [passage_for(c) for c in chunks][:top_k], history
        )
        if example is None:
            result.skipped["too_long"] += 1
        else:
            result.examples.append(example)


def preference_pairs(
    records: Iterable[dict[str, Any]], builder: ExampleBuilder, exclusion: EvalExclusion, *, top_k: int, result: ExampleSet
) -> None:
    """Pairs of `supportbot.preference.v1` records, their prompt rebuilt as the server builds it."""
    for record in records:
        prompt = record["prompt"]
        question = str(prompt[-1]["content"])
        chosen, rejected = str(record["chosen"][0]["content"]), str(record["rejected"][0]["content"])
        history, chunks = _conversation(prompt[1:-1], record.get("passages") or [])
        document = chunks[0].document_id if chunks else ""
        pair_id = f"preference:{record.get('id', '')}"
        if not question.strip() or not chosen.strip() or not rejected.strip():
            result.skipped["empty_pair"] += 1
            continue
        if chosen.strip() == rejected.strip():
            result.skipped["pair_without_preference"] += 1  # the same answer both sides teaches nothing
            continue
        if not exclusion.admits(pair_id, question, document):
            continue
        pair = builder.pair(
            pair_id, "preference", question, document, chosen, rejected, [passage_for(c) for c in chunks][:top_k], history
        )
        if pair is None:
            result.skipped["pair_too_long"] += 1
        else:
            result.pairs.append(pair)
