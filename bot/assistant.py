"""One turn of the conversation: state in, grounded streamed answer and its record out.

    question -> stand-alone query -> retrieve -> decide -> generate -> check -> record

Answers stream sentence by sentence: each sentence is checked against the passages as soon
as it is complete and only supported sentences reach the user. Every turn ends with a
`TurnResult` that says which path it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from bot.generation import GenerationError, GenerationRequest, GenerationStats, Generator
from bot.grounding import GroundednessChecker, complete_sentences, split_sentences
from bot.prompt import PROMPT_VERSION, HistoryTurn, PromptBuilder
from retrieval.retriever import Retriever
from retrieval.types import Passage

NOT_SURE_ANSWER = "I'm not sure about that: I couldn't find it in our help center. Would you like me to connect you with a person from our support team?"
ERROR_ANSWER = (
    "Sorry, something went wrong while I was writing the answer. Please try again, or ask for a person from our support team."
)
# "talk to a person", "can I speak with a human agent?", "I want a real person": the visitor
# asks for a human, so the bot does not try to answer.
_WANTS_HUMAN = re.compile(
    r"(?i)\b(talk|speak|chat|connect|transfer|put)\b.{0,30}\b(person|human|agent|representative|someone|somebody|staff)\b"
    r"|\b(real|live|actual)\s+(person|human|agent)\b|^\s*(human|agent|operator|representative)\W*$"
)
HUMAN_ANSWER = "I'm asking a person from our support team to join this chat. They will reply here."
_FOLLOW_UP = re.compile(r"(?i)^(and|also|what about|how about|but|then|so)\b|\b(it|that|this|those|these|they|them|its|one)\b")


class AnswerPath(StrEnum):
    GENERATED = "generated"  # model answer, every sentence supported by the passages
    FALLBACK = "fallback"  # nothing the model wrote was supported: the best passage itself
    NOT_SURE = "not_sure"  # retrieval was not confident enough to answer: offer a human
    ERROR = "error"  # the generator failed or timed out
    BUSY = "busy"  # every generation slot was taken: the best passage, at once, instead of a long wait
    HUMAN = "human_requested"  # the visitor asked for a person: the conversation joins the handoff queue


@dataclass(frozen=True, slots=True)
class Source:
    title: str
    url: str | None
    document_id: str
    snippet: str
    score: float


@dataclass(frozen=True, slots=True)
class Evidence:
    """A passage as the generator saw it: kept with the answer, exported for retraining."""

    document_id: str
    title: str
    heading: str
    text: str


@dataclass(slots=True)
class TurnResult:
    question: str
    search_query: str
    answer: str = ""
    sources: list[Source] = field(default_factory=list)
    confidence: float = 0.0
    path: AnswerPath = AnswerPath.NOT_SURE
    handoff: bool = False
    model_id: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_s: float | None = None
    generator_ttft_s: float | None = None  # the generator's own share of the time to first token
    retrieval_s: float = 0.0
    total_s: float = 0.0
    removed_sentences: list[str] = field(default_factory=list)
    error: str | None = None
    quoted: str = ""  # on the fallback path: the article text the answer quotes
    prompt_version: str = PROMPT_VERSION
    evidence: list[Evidence] = field(default_factory=list)  # the passages the answer was written from


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    text: str


@dataclass(frozen=True, slots=True)
class TurnDone:
    result: TurnResult


TurnEvent = AnswerDelta | TurnDone


def wants_human(message: str) -> bool:
    """The visitor asks for a human agent rather than asking a question."""
    return bool(_WANTS_HUMAN.search(message))


def standalone_query(message: str, history: Sequence[HistoryTurn]) -> str:
    """A follow-up ("and how much does that cost?") joined to the previous user question.

    Deterministic on purpose: the bundled 270M base model cannot rewrite questions reliably,
    and the retriever only needs the missing topic words.
    """
    previous = next((t.text for t in reversed(history) if t.role == "user"), None)
    if previous and (_FOLLOW_UP.search(message) or len(message.split()) <= 4):
        return f"{previous} {message}"
    return message


class Assistant:
    def __init__(
        self,
        retriever: Retriever,
        generator: Generator,
        checker: GroundednessChecker,
        *,
        prompt_builder: PromptBuilder | None = None,
        confidence_threshold: float = 0.35,
        top_k: int = 4,
        max_new_tokens: int = 128,
        timeout_s: float = 60.0,
        max_message_chars: int = 2000,
        max_concurrent_generations: int | None = None,
    ) -> None:
        if not 0 <= confidence_threshold <= 1:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self._retriever = retriever
        self._generator = generator
        self._checker = checker
        self.prompts = prompt_builder or PromptBuilder(generator.count_tokens, format_chat=generator.format_chat)
        self._threshold = confidence_threshold
        self._top_k = top_k
        self._max_new_tokens = max_new_tokens
        self._timeout_s = timeout_s
        self.max_message_chars = max_message_chars
        if max_concurrent_generations is not None and max_concurrent_generations < 1:
            raise ValueError(f"max_concurrent_generations must be at least 1, got {max_concurrent_generations}")
        self._max_generating = max_concurrent_generations
        self.generating = 0  # answers being generated now (this process)

    async def respond(self, message: str, history: Sequence[HistoryTurn] = ()) -> AsyncGenerator[TurnEvent, None]:
        """Answer deltas as they pass the grounding check, then one `TurnDone`."""
        message = message.strip()
        if not message:
            raise ValueError("message is empty")
        if len(message) > self.max_message_chars:
            raise ValueError(f"message is {len(message)} characters; the limit is {self.max_message_chars}")
        started = time.perf_counter()
        if wants_human(message):
            result = TurnResult(message, message, HUMAN_ANSWER, path=AnswerPath.HUMAN, handoff=True, confidence=1.0)
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(HUMAN_ANSWER)
            yield TurnDone(result)
            return
        result = TurnResult(question=message, search_query=standalone_query(message, history), model_id=self._generator.model_id)
        search = await asyncio.to_thread(self._retriever.search, result.search_query, self._top_k)
        result.retrieval_s = time.perf_counter() - started
        result.confidence = search.confidence
        if search.confidence < self._threshold or not search.passages:
            result.path, result.handoff, result.answer = AnswerPath.NOT_SURE, True, NOT_SURE_ANSWER
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(NOT_SURE_ANSWER)
            yield TurnDone(result)
            return

        budget = self._generator.context_window - self._max_new_tokens
        prompt = self.prompts.build(message, search.passages, history, budget)
        result.sources = _sources(prompt.passages)
        result.evidence = [_evidence(p) for p in prompt.passages]
        evidence = [p.text for p in prompt.passages]
        stats = GenerationStats()
        kept: list[str] = []
        buffer = ""

        said: set[str] = set()  # every sentence the model produced, kept or not

        def fresh(sentences: list[str]) -> tuple[list[str], bool]:
            """Sentences not said before, and whether the model repeated itself.

            Small base models loop; a sentence said twice means nothing new is coming.
            """
            new: list[str] = []
            for sentence in sentences:
                key = _sentence_key(sentence)
                if key in said:
                    return new, True
                said.add(key)
                new.append(sentence)
            return new, False

        async def checked(sentences: list[str]) -> list[str]:
            """Supported sentences that do not echo the prompt (its delimiters or its canary)."""
            checks = await asyncio.to_thread(self._checker.check, sentences, evidence)
            good = [c.sentence for c in checks if c.supported and not self.prompts.echoes_prompt(c.sentence)]
            result.removed_sentences += [c.sentence for c in checks if c.sentence not in good]
            for sentence in good:
                if result.time_to_first_token_s is None:
                    result.time_to_first_token_s = time.perf_counter() - started
                kept.append(sentence)
            return good

        if self._max_generating is not None and self.generating >= self._max_generating:
            # Admission control: a request queued behind a full generator would wait for
            # minutes and time out; the visitor gets the article now, with its source.
            self._quote(result, prompt.passages[0], "Many people are asking right now, so here is")
            result.path = AnswerPath.BUSY
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(result.answer)
            yield TurnDone(result)
            return

        self.generating += 1
        try:
            request = GenerationRequest(
                prompt.text, max_new_tokens=self._max_new_tokens, stop=prompt.stop, timeout_s=self._timeout_s
            )
            # aclosing: leaving the loop early closes the stream now (cancelling the request),
            # not whenever the event loop gets round to finalising the generator.
            async with contextlib.aclosing(self._generator.stream(request, stats)) as stream:
                async for delta in stream:
                    buffer += delta
                    sentences, buffer = complete_sentences(buffer)
                    if sentences:
                        new, looping = fresh(sentences)
                        first = not kept
                        good = await checked(new) if new else []
                        if good:
                            yield AnswerDelta(("" if first else " ") + " ".join(good))
                        if looping:
                            buffer = ""
                            break  # leaving the stream cancels the generation and frees its slot
            tail, _ = fresh(split_sentences(buffer))
            if tail:
                first = not kept
                good = await checked(tail)
                if good:
                    yield AnswerDelta(("" if first else " ") + " ".join(good))
        except GenerationError as exc:
            result.path, result.error, result.handoff = AnswerPath.ERROR, str(exc), True
            if not kept:
                result.answer = ERROR_ANSWER
                result.time_to_first_token_s = time.perf_counter() - started
                yield AnswerDelta(ERROR_ANSWER)
        else:
            if kept:
                result.path = AnswerPath.GENERATED
            else:
                self._quote(result, prompt.passages[0], "Here is")
                result.path = AnswerPath.FALLBACK
                result.time_to_first_token_s = time.perf_counter() - started
                yield AnswerDelta(result.answer)
        finally:
            self.generating -= 1
        if kept:
            result.answer = " ".join(kept)
        result.prompt_tokens, result.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        result.generator_ttft_s = stats.time_to_first_token_s
        result.total_s = time.perf_counter() - started
        yield TurnDone(result)

    def _quote(self, result: TurnResult, best: Passage, lead: str) -> None:
        """Answer with the article itself, minus any sentence that tries to act as instructions."""
        clean = [x for x in split_sentences(best.text) if not self.prompts.looks_like_injection(x)]
        quoted = " ".join(clean[:3]) or best.title
        result.sources, result.evidence, result.quoted = [_source(best)], [_evidence(best)], quoted
        result.answer = f'{lead} what our help center says in "{best.title}": {quoted}'


def _sentence_key(sentence: str) -> str:
    return " ".join(sentence.lower().split())


def _source(passage: Passage) -> Source:
    return Source(passage.title, passage.url, passage.document_id, passage.text[:240], round(passage.confidence, 4))


def _evidence(passage: Passage) -> Evidence:
    return Evidence(passage.document_id, passage.title, passage.chunk.heading, passage.text)


def _sources(passages: Sequence[Passage]) -> list[Source]:
    """One source per document, in rank order."""
    seen: dict[str, Source] = {}
    for passage in passages:
        seen.setdefault(passage.document_id, _source(passage))
    return list(seen.values())
