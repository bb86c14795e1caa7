"""The answer composer: the help center's own sentences that answer the question.

It cannot invent: every word of its answer is quoted from a retrieved passage. Each
sentence (or list item) of the passages is scored against the question, by meaning (the
embedder, on the sentence alone and as it sits under its article's title and section
heading) and by the question's own words, and the best ones are quoted in article order,
with a list kept whole when the best sentence is one of its steps, an FAQ entry's short
answer quoted whole (but for its own "Yes" or "No", which answer its question, not the
visitor's), and the sentence after the best one kept with it (the fact a visitor needs is
often the next sentence: "Refunds are issued within 5 business days" after "You can return
... within 30 days"). When another article's best sentence scores nearly as well, it is
quoted too, under its own title: the right article is not always the best-scored one. When
none does, another section of the same article that does is quoted the same way (a section
is often a passage of its own). It is the floor every answer falls back to, and the answer
whenever the generator has not earned trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.grounding import split_sentences
from knowledge_base.chunking import embedding_text, faq_question
from retrieval.embedder import Embedder
from retrieval.lexical import LexicalTokenizer
from retrieval.types import Passage

log = logging.getLogger("supportbot.composer")

# The file beside an index version that keeps its sentences' vectors between starts (warm_up).
VECTORS_FILE = "composer-vectors.npz"
_KEY_BYTES = 16


def _text_key(text: str) -> bytes:
    """A sentence's key in the vectors file: a digest, so the file holds no help-center text."""
    return hashlib.blake2b(text.encode(), digest_size=_KEY_BYTES).digest()


_ENDINGS = ("s", "es", "d", "ed", "ing", "r", "rs", "er", "ers")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"[.!?:;)\"'\u201d]$")  # a line that ends here is not wrapped mid-sentence
# Lead-ins that only make sense after the sentence before them ("It expires ...").
# An answer's own "Yes" or "No" answers the article's question, not the visitor's: quoted to
# "will it run on iPadOS 15?", 'Can I use the app on a tablet?: "Yes, on iPads with iPadOS 16
# or newer"' reads as yes. The fact after it is quoted; the word is not. "Not yet" and a bare
# "Never." answer it as much: "does the kettle work with google home?" got the Apple Home
# entry's "Not yet.", though Google's assistant works today.
_ANSWER_WORD = re.compile(r"(?i)^(?:yes|no|not yet|never)\b\s*(?:[.!]\s*$|[,:;]\s*(?:but\s+)?|[-\u2013\u2014]\s+(?:but\s+)?)")
# An amount the visitor names ("30 days", "$35", "3 times", "100ml"): what they think it is, a
# claim to check, not a word to match. "I still have 30 days to report damage, right?" must
# find the article that says 14 days, not the 30-day return window. Codes stay ("E-101").
_AMOUNT = re.compile(
    r"(?i)(?:[$\u20ac\u00a3]\s*(\d+(?:[.,]\d+)*))|(?<![\w-])(\d+(?:[.,]\d+)*)\s*(?:%|percent|per ?cent|degrees?\b|\u00b0|"
    r"(?:seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|times|ml|l|litres?|liters?|cups?"
    r"|dollars?|euros?|pounds?|bucks)\b)"
)
# "How long", "how much", "how many": the kind of answer asked for (a duration, an amount), not
# a topic to match. "how long is the warranty" shared "long" with "for as long as their
# membership is active" ("as much as", "as soon as", "so far" too). Not "how old": its answer
# says "8 years old".
_ANSWER_KIND = re.compile(r"(?i)\bhow\s+(?:long|much|many|often|soon|far)\b")
_DIGIT = re.compile(r"\d")
# "How many watts": the thing counted, which the answer must name ("how many employees does
# brewlo have" was answered sure with a sentence about Apple sign-in).
_HOW_MANY = re.compile(r"(?i)\bhow\s+many\s+([a-z]+)")
# An amount written without digits: what answers "how much", "how long" or "how often" too.
_AMOUNT_WORDS = re.compile(
    r"(?i)\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|sixty|"
    r"hundred|thousand|dozen|half|once|twice|few|several|free|nothing|unlimited|every|"
    r"each|daily|weekly|monthly|yearly|annually|hourly|immediately|instantly|right\s+away|at\s+once|same\s+day|"
    r"minute|hour|day|week|month|year|no\s+(?:\w+\s+)?(?:cost|charge|fee))s?\b"
)
# "How much does it cost", "how much do I pay", "how much is a K1": a price, which a count is
# not ("how much does the kettle cost" was answered sure with "Up to 8 kettles per account").
_PRICE_ASKED = re.compile(
    r"(?i)\bhow\s+much\b(?:\s+(?:is|are|was|were|will|would)\b|.*\b(?:costs?|price[ds]?|pay|paid|charged?|fees?)\b)"
)
_PRICE = re.compile(
    r"(?i)[$\u20ac\u00a3]\s*\d|\d\s*(?:dollars?|euros?|pounds?|usd|eur|gbp|cad|chf|%)|\bfree\b|\bincluded\b|"
    r"\bno\s+(?:\w+\s+)?(?:cost|charge|fee)s?\b"
)
# A unit counted, as an amount writes it: "how many watts" is answered by "2200 W".
_UNIT_SYMBOLS = {
    "watt": r"k?W",
    "kilowatt": r"kWh?",
    "volt": r"V",
    "litre": r"m?l",
    "liter": r"m?l",
    "millilitre": r"ml",
    "milliliter": r"ml",
    "degree": r"\u00b0[CF]?",
    "minute": r"min",
    "hour": r"h|hrs?",
    "gram": r"k?g",
}
# A sentence that sends the reader to another article ("See the returns article for how to send
# it back.") names that article's topic, so it matches the question well, but it answers nothing.
_POINTER = re.compile(r"(?i)\b(?:see|follow|read)\s+(?:the|our)\b[^.]*?\barticles?\b")
# Words that name no topic, which the word index's short stop list keeps: pronouns, modal verbs,
# fillers and chat words. "my sister returned the kettle i got her for xmas, how does she get the
# money back" counted "she" and "her" as words the help center never uses, like "nespresso".
# Not the reflexives: "does it shut itself off" is the FAQ "Does the kettle turn itself off?".
_FILLERS = (
    "he she her hers him his they them their theirs we us our ours "
    "mine yours someone somebody anyone anybody everyone everybody "
    "something anything everything could would should might must shall may will did done doing "
    "been being am has had having gonna wanna gotta just also really still even already yet here there "
    "then now very quite any some every each such either else ever yeah yep yes ok okay please thanks "
    "thank hi hello hey lol haha omg btw tbh idk"
)
_CONTINUATION = re.compile(r"(?i)^(it|this|that|they|these|those|then|the link|the code|if so)\b")


@dataclass(frozen=True, slots=True)
class Unit:
    """A sentence, or one item of a list, in the order it stands in its passage."""

    text: str
    block: int  # units of one paragraph or one list share a block
    is_item: bool


@dataclass(frozen=True, slots=True)
class Quote:
    """Units quoted from one more article, after the best one's."""

    text: str
    passage: Passage
    relevance: float


@dataclass(frozen=True, slots=True)
class Composition:
    text: str  # the quoted units, list structure kept
    passage: Passage  # the passage they come from
    relevance: float  # the best unit's score for the question
    coverage: float  # share of the question's own words found in the passage (title and heading included)
    also: tuple[Quote, ...] = ()  # other articles whose best units scored within `second_margin` of it
    runner_up: float = 0.0  # the best score of a unit of another article (0: none)
    topic_bonus: float = 0.0  # added when choosing it: a follow-up's article just quoted (not in `relevance`)

    @property
    def passages(self) -> list[Passage]:
        return [self.passage, *(q.passage for q in self.also)]

    @property
    def quoted(self) -> str:
        """Every quoted unit, of every article, as one text."""
        return "\n".join([self.text, *(q.text for q in self.also)])


def passage_units(text: str) -> list[Unit]:
    """Sentences and list items of a passage, each tagged with its block."""
    units: list[Unit] = []
    block = 0
    in_list = False
    lines = text.splitlines()
    if lines and lines[0].startswith("Q:"):
        # An FAQ entry: its question is what matched, not an answer; quote the answer.
        lines = [line.removeprefix("A:").strip() for line in lines[1:]]
    for line in _unwrap(lines):
        if not line:
            block += 1
            in_list = False
            continue
        item = bool(_LIST_ITEM.match(line))
        if item != in_list:
            block += 1
            in_list = item
        if item:
            units.append(Unit(line, block, True))
        else:
            sentences = (_without_answer_word(s) for s in split_sentences(line))
            units.extend(Unit(sentence, block, False) for sentence in sentences if sentence)
    return units


def _probes(unit: Unit) -> list[str]:
    """What a unit is judged by: itself, and a list item's sentences each ("Tap Reset password.
    The link expires after 1 hour." answers "how long is the link valid")."""
    return [unit.text, *(split_sentences(unit.text) if unit.is_item else [])]


def _is_faq(passage: Passage) -> bool:
    """An FAQ entry ("Q: ...\nA: ..."), quoted whole."""
    return faq_question(passage.text) is not None


def _amounts(question: str) -> list[str]:
    """The numbers of the amounts a question names ("30 days", "$9.95" -> ["30", "9.95"])."""
    return [m.group(1) or m.group(2) for m in _AMOUNT.finditer(question)]


def _without_answer_word(sentence: str) -> str:
    """The sentence without a leading "Yes"/"No" ("Yes, on iPads ..." -> "On iPads ..."); "" when
    that was all of it."""
    match = _ANSWER_WORD.match(sentence)
    if match is None:
        return sentence
    rest = sentence[match.end() :]
    return rest[:1].upper() + rest[1:]


def _unwrap(lines: list[str]) -> list[str]:
    """Stripped lines, a sentence wrapped over two lines joined again ("... and contact" /
    "Brewlo support."): quoting its halves apart would cut it. The first line is a heading."""
    out: list[str] = []
    for raw in lines:
        line = raw.strip()
        previous = out[-1] if len(out) > 1 else ""
        wrapped = previous and line and not _SENTENCE_END.search(previous)
        if wrapped and not _LIST_ITEM.match(line) and not _LIST_ITEM.match(previous):
            out[-1] = f"{previous} {line}"
            continue
        out.append(line)
    return out


class AnswerComposer:
    """Quotes the sentences of `passages` that answer a question.

    `lexical_weight` weighs the share of the question's words a sentence contains against
    its cosine similarity; it, `neighbour_margin`, `second_margin` and `faq_question_margin`
    are fitted on the tuning split (docs/benchmarks.md). `second_margin` None quotes one
    article only.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        lexical_weight: float = 0.6,
        ignore_words: str = "",
        passage_weight: float = 0.6,
        max_units: int = 3,
        max_chars: int = 700,
        neighbour_margin: float = 0.3,
        follow_next: bool = True,
        second_margin: float | None = 0.1,
        faq_question_margin: float | None = 0.2,
        topic_weight: float = 0.5,
        context_weight: float = 0.4,
        pointer_penalty: float = 0.3,
        lead_margin: float | None = 0.05,
        heading_weight: float = 0.3,
        cache_size: int = 20_000,
    ) -> None:
        if max_units < 1 or max_chars < 40:
            raise ValueError("max_units must be at least 1 and max_chars at least 40")
        self._embedder = embedder
        self._tokenizer = LexicalTokenizer()
        self.lexical_weight = lexical_weight
        self.passage_weight = passage_weight  # how much the passage's own retrieval confidence counts
        # The company's own name is in half the help center: sharing it answers nothing.
        self._ignored = set(self._tokenizer.tokenize(ignore_words))
        self._ignored |= set(self._tokenizer.tokenize(_FILLERS))
        self.max_units = max_units
        self.max_chars = max_chars
        self.neighbour_margin = neighbour_margin
        self.follow_next = follow_next  # keep the sentence after the best one (same paragraph)
        self.second_margin = second_margin
        self.faq_question_margin = faq_question_margin  # None: an FAQ entry's question does not count
        # A follow-up's passages from the articles the answer before it quoted count this much
        # more when choosing what to quote (fitted on the tuning split: docs/benchmarks.md).
        self.topic_weight = topic_weight
        # A follow-up's sentences are scored this much against the whole conversation's question
        # (the search query: the follow-up joined to the questions before it), the rest against
        # the follow-up alone. "how long is it valid?" after "how do i change my email" and "the
        # link expired" got the data export's "The link is valid for 7 days" (email: 24 hours).
        self.context_weight = context_weight
        # Taken off a sentence that points to another article: "how do i export my data" got
        # the account deletion's "Download your data if you want a copy (see the article on
        # exporting your data)" while the export article, ranked first, says how.
        self.pointer_penalty = pointer_penalty
        # The second article's quote comes first when its retrieval confidence is higher by more
        # than this (None: the best-scoring quote always comes first).
        self.lead_margin = lead_margin
        # This share of a sentence's cosine is taken with the sentence as it sits in its article,
        # after its title and section heading (`embedding_text`, as chunks are embedded), the
        # rest with the sentence alone: "the water isn't hot enough" is the temperature
        # article's "The kettle is accurate to within 2 °C", which alone reads as nothing about
        # heat (fitted on the tuning split).
        self.heading_weight = heading_weight
        # Unit vectors by text: the same passages come back for many questions.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._piece_counts: dict[str, int] = {}

    def warm_up(
        self, passage_texts: Sequence[str], store: Path | None = None, headings: Sequence[tuple[str, str]] | None = None
    ) -> int:
        """Embed every unit of these passages now, so the first questions only embed themselves;
        returns how many were embedded. `headings`: each passage's (title, section heading), for
        the units as they sit in their article (`heading_weight`); without them those are
        embedded when first asked for.

        `store`, a file beside the index version the passages come from, keeps the vectors
        between starts: a restart, and every other worker, reads them instead of embedding
        the whole help center again (4.7 s for the sample's 130 articles on 2 cores, and it
        grows with the help center). A store that is missing, unreadable or from another
        embedder is only a slower start: what it lacks is embedded and it is written again."""
        probes = [[t for u in passage_units(text) for t in _probes(u)] for text in passage_texts]
        texts = [t for passage in probes for t in passage]
        texts += [question for text in passage_texts if (question := faq_question(text))]
        if headings is not None and self.heading_weight > 0:
            texts += [
                embedding_text(title, heading, t)
                for passage, (title, heading) in zip(probes, headings, strict=True)
                for t in passage
            ]
        texts = list(dict.fromkeys(texts))
        stored = self._read_store(store) if store is not None else {}
        keys = [_text_key(t) for t in texts]
        vectors = {k: stored[k] for k in keys if k in stored}
        # A new index version (an ingest, swapped in while serving) repeats most of the last
        # one's sentences: those already in memory are not embedded again.
        with self._lock:
            vectors.update({k: self._cache[t] for t, k in zip(texts, keys, strict=True) if k not in vectors and t in self._cache})
        missing = [t for t, k in zip(texts, keys, strict=True) if k not in vectors]
        for start in range(0, len(missing), 256):
            batch = missing[start : start + 256]
            vectors.update(zip((_text_key(t) for t in batch), self._embedder.embed(batch), strict=True))
        with self._lock:
            for text, key in zip(texts, keys, strict=True):
                self._cache[text] = vectors[key]
                self._cache.move_to_end(text)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if store is not None and stored.keys() != set(keys):
            self._write_store(store, keys, vectors)
        return len(missing)

    def _read_store(self, store: Path) -> dict[bytes, np.ndarray]:
        """The vectors a `warm_up` kept in `store`, by text key; none when it is missing or not ours."""
        try:
            with np.load(store, allow_pickle=False) as data:
                model, keys, vectors = str(data["model"]), data["keys"], data["vectors"]
        except (FileNotFoundError, NotADirectoryError):  # the first start on this index version
            return {}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("sentence vectors in %s are unreadable (%s): embedding them again", store, exc)
            return {}
        expected = (len(keys), self._embedder.dimension)
        if model != self._embedder.model_id or vectors.shape != expected or vectors.dtype != np.float32:
            log.info(
                "sentence vectors in %s are from %s %s, not %s: embedding them again",
                store,
                model,
                vectors.shape,
                self._embedder.model_id,
            )
            return {}
        # A fixed-width bytes array drops its items' trailing zero bytes: a digest that ends in
        # one came back a byte short, so its sentence was embedded, and the file written, again
        # on every start.
        return dict(zip((key.ljust(_KEY_BYTES, b"\0") for key in keys.tolist()), vectors, strict=True))

    def _write_store(self, store: Path, keys: list[bytes], vectors: dict[bytes, np.ndarray]) -> None:
        """`vectors` of `keys` into `store`, whole or not at all (a reader never sees half a file)."""
        partial = store.with_name(f".{store.name}.{os.getpid()}.tmp")
        try:
            with partial.open("wb") as out:
                np.savez(
                    out,
                    model=np.array(self._embedder.model_id),
                    keys=np.array(keys, dtype=f"S{_KEY_BYTES}"),
                    vectors=np.stack([vectors[k] for k in keys]).astype(np.float32, copy=False),
                )
            os.replace(partial, store)
        except OSError as exc:  # a read-only index: every start embeds, as before
            log.warning("could not keep sentence vectors in %s (%s): the next start embeds them again", store, exc)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)

    def words(self, text: str) -> set[str]:
        return set(self._tokenizer.tokenize(text)) - self._ignored

    def asked_words(self, question: str) -> set[str]:
        """The question's own words that a sentence may share: not "how long" or "how much" (the
        kind of answer asked for) nor the amounts it names (claims to check)."""
        return self.words(_ANSWER_KIND.sub(" ", question)) - self.words(" ".join(_amounts(question)))

    def names_code(self, passage: Passage, codes: Collection[str]) -> bool:
        """Whether the passage (its title, heading or text) names one of `codes`, written without
        a hyphen ("e410" for "E-410" and "e410")."""
        words = self.words(f"{passage.title} {passage.chunk.heading} {passage.text}")
        return not {w.replace("-", "") for w in words}.isdisjoint(codes)

    def answers_kind(self, question: str, quote: str) -> bool:
        """Whether `quote` holds the kind of answer the question asks for: an amount for "how
        long", "how much" or "how often", a price for "how much does it cost", and the thing
        counted for "how many"."""
        if not _ANSWER_KIND.search(question):
            return True
        if not (_DIGIT.search(quote) or _AMOUNT_WORDS.search(quote)):
            return False
        if _PRICE_ASKED.search(question) and not _PRICE.search(quote):
            return False
        counted = _HOW_MANY.search(question)
        if counted is None or not (self.words(counted.group(1)) - self.words(quote)):
            return True
        symbol = _UNIT_SYMBOLS.get(counted.group(1).lower().removesuffix("s"))
        return symbol is not None and re.search(rf"\d\s*(?:{symbol})(?![A-Za-z])", quote) is not None

    def is_everyday_word(self, word: str) -> bool:
        """Whether the embedder's vocabulary holds `word` (lower case letters) as one word
        piece, as it is or without a plural, -d, -ed, -ing or -er ending: "movers" and
        "dented" are, "costco" and "nespresso" are not."""
        forms = [word] + [word[: -len(end)] for end in _ENDINGS if word.endswith(end) and len(word) - len(end) >= 3]
        return any(self._pieces(form) == 1 for form in forms)

    def _pieces(self, word: str) -> int:
        with self._lock:
            cached = self._piece_counts.get(word)
        if cached is None:
            cached = self._embedder.count_tokens(word)
            with self._lock:
                if len(self._piece_counts) > self._cache_size:
                    self._piece_counts.clear()
                self._piece_counts[word] = cached
        return cached

    def compose(
        self,
        question: str,
        passages: Sequence[Passage],
        *,
        drop: Callable[[str], bool] = lambda _: False,
        question_vector: np.ndarray | None = None,
        topic: Collection[str] = (),
        codes: Collection[str] = (),
        context_vector: np.ndarray | None = None,
    ) -> Composition | None:
        """The best-answering units of the best passage, or None when the passages have none.

        `drop` removes units that must never be quoted (ones that read as instructions);
        `question_vector`, the question's embedding when the caller has it (retrieval embedded
        the same text), saves embedding it again. `topic`: titles of the articles the answer
        before a follow-up quoted; their passages get `topic_weight` when the best is chosen,
        which `relevance` leaves out (`topic_bonus` says what it was). `context_vector`: for a
        follow-up, the embedding of the question it was searched with (`context_weight`).
        `codes`: codes the help center lists that the question names, without their hyphen
        ("e410"); when some passages name one, only they are quoted ("my kettle shows E-410
        what now" got the E-205 section of the error codes).
        """
        candidates = [(p, [u for u in passage_units(p.text) if not drop(u.text)]) for p in passages]
        candidates = [(p, units) for p, units in candidates if units]
        if codes:
            naming = [(p, units) for p, units in candidates if self.names_code(p, codes)]
            candidates = naming or candidates
        if not candidates:
            return None
        owners = [p for p, units in candidates for _ in units]  # the passage of each unit
        probes = [_probes(u) for _, units in candidates for u in units]
        flat = [t for texts in probes for t in texts]
        if self.heading_weight > 0:
            flat += [embedding_text(p.title, p.chunk.heading, t) for p, texts in zip(owners, probes, strict=True) for t in texts]
        question_vector, vectors = self._vectors(question, flat, question_vector)

        def similarity(to: np.ndarray) -> np.ndarray:
            """Each probe's cosine with `to`: alone, mixed with the same probe in its place."""
            cosines = vectors @ to
            if self.heading_weight == 0:
                return cosines
            alone, in_place = np.split(cosines, 2)
            return (1 - self.heading_weight) * alone + self.heading_weight * in_place

        cosines = similarity(question_vector)
        if context_vector is not None and self.context_weight > 0:
            cosines = (1 - self.context_weight) * cosines + self.context_weight * similarity(context_vector)
        unit_cosines: list[float] = []
        offset = 0
        for texts in probes:
            unit_cosines.append(float(cosines[offset : offset + len(texts)].max()))
            offset += len(texts)
        # A passage counts with its document's best retrieval confidence: the chunk that holds the
        # answer often scores below its neighbour under a closer heading.
        document_confidence: dict[str, float] = {}
        for passage, _ in candidates:
            document_confidence[passage.document_id] = max(document_confidence.get(passage.document_id, 0.0), passage.confidence)
        asked = self.asked_words(question)
        # An FAQ entry's sentences answer its question: they count at least as well as that
        # question matches the visitor's, less a margin. "what's the maximum capacity of the
        # kettle?" is "What is the capacity of the kettle?", whose answer ("The K1 holds 1.2
        # litres ...") the embedder ranks below "Up to 8 kettles per account".
        entry_cosines: dict[int, float] = {}  # passage index -> its question's cosine, less the margin
        asks = {pi: ask for pi, (passage, _) in enumerate(candidates) if (ask := faq_question(passage.text))}
        if self.faq_question_margin is not None and asks:
            _, ask_vectors = self._vectors(question, list(asks.values()), question_vector)
            cosines_of_asks = (ask_vectors @ question_vector).tolist()
            entry_cosines = {pi: c - self.faq_question_margin for pi, c in zip(asks, cosines_of_asks, strict=True)}
        best: tuple[float, int, int] | None = None  # score, passage index, unit index
        scores: list[list[float]] = []
        offset = 0
        for pi, (passage, units) in enumerate(candidates):
            context = self.words(f"{passage.title} {passage.chunk.heading}")
            prior = self.passage_weight * document_confidence[passage.document_id]
            if passage.title in topic:
                prior += self.topic_weight
            row: list[float] = []
            for ui, unit in enumerate(units):
                shared = len(asked & (self.words(unit.text) | context)) / len(asked) if asked else 0.0
                cosine = unit_cosines[offset + ui]
                if pi in entry_cosines:
                    cosine = max(cosine, entry_cosines[pi])
                score = cosine + self.lexical_weight * shared + prior
                if _POINTER.search(unit.text):
                    score -= self.pointer_penalty
                row.append(score)
                if best is None or score > best[0]:
                    best = (score, pi, ui)
            scores.append(row)
            offset += len(units)
        assert best is not None
        score, pi, ui = best
        passage, units = candidates[pi]

        def quote(pj: int, uj: int) -> str:
            """Unit `uj` of passage `pj` with the units `_select` keeps around it, rendered."""
            chosen = self._select(candidates[pj][1], scores[pj], uj, whole=_is_faq(candidates[pj][0]), asked=asked)
            return _render([candidates[pj][1][i] for i in chosen], self.max_chars)

        text = quote(pi, ui)
        passage_words = self.words(f"{passage.title} {passage.chunk.heading} {passage.text}")
        coverage = len(asked & passage_words) / len(asked) if asked else 0.0
        # The best unit of another article: quoted too when it scores nearly as well.
        others = [
            (s, pj, uj)
            for pj, row in enumerate(scores)
            if candidates[pj][0].document_id != passage.document_id
            for uj, s in enumerate(row)
        ]
        runner_up = max(others, default=None)
        # Else another section of the same article, a passage of its own: "how do i cancel my
        # subscription" got the App Store paragraph, while the "Cancel" section holds the steps.
        sections = [
            (s, pj, uj)
            for pj, row in enumerate(scores)
            if pj != pi and candidates[pj][0].document_id == passage.document_id
            for uj, s in enumerate(row)
        ]
        also: tuple[Quote, ...] = ()
        if self.second_margin is not None:
            close = [c for c in (runner_up, max(sections, default=None)) if c is not None and c[0] >= score - self.second_margin]
            if close:
                s2, pj, uj = close[0]
                also = (Quote(quote(pj, uj), candidates[pj][0], round(s2, 4)),)
        # The bonus chooses among passages and may earn a quote as a suggestion; whether the
        # answer is sure is judged without it ("what about my philips hue lights with it?" after
        # the Alexa article is not about Brewlo).
        bonus = self.topic_weight if passage.title in topic else 0.0
        score -= bonus
        # Of two articles that answer nearly as well, the one retrieval trusts more is quoted
        # first: the visitor reads the first quote. "the kettle doesn't heat at all" led with the
        # safety instructions' "The body of the kettle gets hot while heating", and "i forgot my
        # password" with "Can't sign in", each ahead of the article ranked first. Not in a
        # follow-up, where the article just quoted leads.
        lead = passage
        if also and self.lead_margin is not None and not topic and also[0].passage.document_id != passage.document_id:
            other = also[0].passage
            if document_confidence[other.document_id] > document_confidence[passage.document_id] + self.lead_margin:
                lead, text, also = other, also[0].text, (Quote(text, passage, round(score, 4)),)
        return Composition(
            text,
            lead,
            round(score, 4),
            round(coverage, 4),
            also=also,
            runner_up=round(runner_up[0], 4) if runner_up else 0.0,
            topic_bonus=bonus,
        )

    def _select(
        self,
        units: list[Unit],
        scores: list[float],
        best: int,
        whole: bool = False,
        asked: frozenset[str] | set[str] = frozenset(),
    ) -> list[int]:
        """The best unit, its whole list if it is a list item, and close runners-up nearby; every
        unit when `whole` (an FAQ entry: its short answer is written as one, and its best-matching
        sentence is often the one after the step the visitor needs).

        The sentence before the best one comes too when the best one continues it ("It ...",
        "This ..."), or when both state a figure and the one before speaks of what was `asked`:
        "Brewlo Club members get an extended 3-year warranty" alone reads as the rule; the
        rule is the 2 years before it."""
        if whole:
            return list(range(len(units)))
        if not units[best].is_item and units[best].text.endswith(":") and best + 1 < len(units) and units[best + 1].is_item:
            best += 1  # a list's intro ("Order statuses:") says nothing without its list
        if units[best].is_item:
            block = [i for i, u in enumerate(units) if u.block == units[best].block]
            intro = block[0] - 1
            if intro >= 0 and units[intro].text.endswith(":"):
                block.insert(0, intro)
            return block
        chosen = {best}
        after = best + 1
        # A sentence that points to another article is no answer: the one after it is the next.
        # "You can return a kettle ... within 30 days" was followed by "See the returns article
        # ..." instead of "... the refund is issued within 5 business days".
        if after + 1 < len(units) and _POINTER.search(units[after].text) and units[after + 1].block == units[best].block:
            after += 1
        if (
            after < len(units)
            and units[after].block == units[best].block
            and (self.follow_next or _CONTINUATION.match(units[after].text))
        ):
            chosen.add(after)
        if best > 0 and units[best - 1].block == units[best].block:
            before = units[best - 1].text
            if _CONTINUATION.match(units[best].text) or (
                _DIGIT.search(before) and _DIGIT.search(units[best].text) and asked & self.words(before)
            ):
                chosen.add(best - 1)
        ranked = sorted(range(len(units)), key=lambda i: -scores[i])
        for i in ranked:
            if len(chosen) >= self.max_units:
                break
            if not units[i].is_item and scores[i] >= scores[best] - self.neighbour_margin and abs(i - best) <= 2:
                chosen.add(i)
        return sorted(chosen)

    def _vectors(
        self, question: str, texts: list[str], question_vector: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The question's vector and those of `texts`; only what is neither given nor cached is embedded."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh: dict[str, np.ndarray] = {}
        if question_vector is None:
            embedded = self._embedder.embed([question, *missing])
            question_vector = embedded[0]
            fresh = dict(zip(missing, embedded[1:], strict=True))
        elif missing:
            fresh = dict(zip(missing, self._embedder.embed(missing), strict=True))
        with self._lock:
            vectors = np.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])
            for text, vector in fresh.items():
                self._cache[text] = vector
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return question_vector, vectors


def _render(units: list[Unit], max_chars: int) -> str:
    """Units joined as they stood: list items one per line, sentences of a paragraph in one line."""
    parts: list[str] = []
    previous: Unit | None = None
    for unit in units:
        if parts and sum(len(p) for p in parts) + len(unit.text) > max_chars:
            break
        if previous is not None and (unit.is_item or previous.is_item or unit.block != previous.block):
            parts.append("\n")
        elif previous is not None:
            parts.append(" ")
        parts.append(unit.text)
        previous = unit
    return "".join(parts).strip()
