"""One turn of the conversation: state in, a grounded answer and its record out.

    question -> stand-alone query -> retrieve -> decide -> compose (or generate -> check) -> record

The composer quotes the help center's own sentences that answer the question, at once: it
cannot invent, so it is the answer unless the generator has earned trust (answer mode
`generative`, chosen by `bot.answer_policy`). Generated answers stream sentence by sentence;
each is checked against the passages for support and for contradiction as soon as it is
complete, and only sentences that pass reach the user; when none pass, the composer answers.
Every turn ends with a `TurnResult` that says which path it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from rapidfuzz import process
from rapidfuzz.distance import OSA

from bot.composer import VECTORS_FILE, AnswerComposer, Composition, Quote
from bot.generation.generator import GenerationError, GenerationRequest, GenerationStats, Generator
from bot.grounding import GroundednessChecker, complete_sentences, split_sentences
from bot.prompt import PROMPT_VERSION, HistoryTurn, PromptBuilder
from bot.small_talk import small_talk_reply, without_small_talk
from knowledge_base.chunking import HEADING_PATH_SEPARATOR
from retrieval.lexical import STOPWORDS
from retrieval.retriever import Retriever
from retrieval.types import Passage, SearchResult, Visibility

OFFER_QUESTION = "Would you like me to connect you with a person from our support team?"
_ANSWERS_REMEMBERED = 3  # how many of the bot's last answers a statement may not be given again
# A statement after an answer that would get the same quote again ("that didn't help").
REPEAT_ANSWER = f"I'm sorry that didn't help. I have nothing more on it in our help center. {OFFER_QUESTION}"
# An angry message that says nothing of what went wrong.
VENTING_ANSWER = f"I'm sorry this has been frustrating. Tell me what went wrong, or: {OFFER_QUESTION}"
NOT_SURE_ANSWER = f"I'm not sure about that: I couldn't find it in our help center. {OFFER_QUESTION}"
# After the answers to the questions of a message it could answer, the ones it could not (by
# their place: echoed, a visitor's "is it fine to open the lid mid-boil?" reads as a claim).
UNSURE_PART = "I couldn't find an answer to your {which} in our help center."
# A question of several in one message that the bot is not sure of, with its closest passage.
SUGGESTED_PART = "I'm not sure about your {which}. The closest I found in our help center is from {cited}:"
_ORDINALS = ("first", "second", "third")
# "talk to a person", "can I speak with a human agent?", "I want a real person": the visitor
# asks for a human, so the bot does not try to answer.
_WANTS_HUMAN = re.compile(
    r"(?i)\b(talk|speak|chat|connect|transfer|put)\b.{0,30}\b(person|human|agent|representative|someone|somebody|staff"
    r"|manager|supervisor)\b"
    r"|\b(real|live|actual)\s+(person|human|agent)\b|^\s*(human|agent|operator|representative|manager)\W*$"
    # "how do i contact support", "can i speak with customer service": in this chat, a person is the way.
    r"|\b(talk|speak|chat|contact|reach|call|email)\s+(to\s+|with\s+)?(your\s+|the\s+)?(customer\s+)?"
    r"(support|service|care|team)\b(?!\s+(article|page|site))"
)
# Not sure, but the help center has something close: said before and after its quote.
SUGGESTION_LEAD = "I'm not sure this answers your question. The closest I found in our help center:"
SUGGESTION_OFFER = "If that doesn't answer it, would you like me to connect you with a person from our support team?"
# How a quote is introduced ('From our article "Title": ...', or '... "Title", under "Section": ...',
# and 'And in the same article, under "Section": ...'): framing, not something the article says.
# Group 1 is the article's title (None for another section of the same article).
QUOTE_FRAMING = re.compile(r'(?:(?:From our article|And from) "([^"\n]*)"|And in the same article)(?:, under "[^"\n]*")?:[ \t]*')
# Where an answer's second quote starts: another article's, or another section's of the first.
SECOND_QUOTE = re.compile(r"\n\nAnd (?:from \"|in the same article\b)")
# Headings that name no part of what an article covers: a PDF's pages.
_PAGE_HEADING = re.compile(r"(?i)^page \d+$")
HUMAN_ANSWER = "I'm asking a person from our support team to join this chat. They will reply here."
OFFER_PERSON = "If that doesn't solve it, I can connect you with a person from our support team."
# The answer to "Would you like me to connect you with a person?": "yes please" asks for one
# (it got "I'm not sure about that" again), "no thanks" does not.
_ACCEPTED = re.compile(
    r"(?i)^\W*(?:(?:yes|yeah|yea|yep|yup|sure|please|ok(?:ay)?\W+please)\W*(?:please|do|thanks?|thank you|"
    r"that would (?:be great|help)|go ahead|connect me|ok)?|y|please do|go ahead|do it|connect me)\W*$"
)
_OK = re.compile(r"(?i)^\W*ok(?:ay)?\W*$")
_DECLINED = re.compile(r"(?i)^\W*(?:no|nope|nah|not now|no need|i'?m good|i'?m fine)\W*(?:thanks?|thank you|thx)?\W*$")
DECLINED_REPLY = "Alright. If there is anything else, just ask here."
# A message that asks something: a question mark, or a question's first word.
_ASKS = re.compile(
    r"(?i)\?|^\s*(?:(?:and|but|so|ok|okay)\s+)?(?:what|how|when|where|which|who|whom|whose|why|can|could|do|does|did|is|are|"
    r"was|were|will|would|should|may|might|must|am|has|have|had)\b"
)
# Clearly angry or fed-up text: the visitor is offered a person before they have to ask.
_FRUSTRATED = re.compile(
    r"(?i)\b(useless|ridiculous|terrible|awful|worst|pathetic|stupid|garbage|rubbish|scam|furious|angry|fed up|sick of"
    r"|not helpful|doesn'?t help|didn'?t help|not working|still (not|doesn'?t|broken)|waste of time|wtf|damn|!!+)"
)
# Of the frustration phrases, those that report a problem rather than vent: "wifi not working".
_REPORTS = re.compile(r"(?i)not working|still (?:not|doesn'?t|broken)")
# Words that only make angry text louder: no problem is named by them, though an FAQ entry's
# question may hold one ("Will support ever ask for my password?": "the worst kettle ever").
_EMPHASIS = ("ever", "even", "just", "really", "so", "very", "totally", "completely", "literally", "absolutely", "always")
_WORD = re.compile(r"[a-z0-9]+")
# Chat shorthand for the words a help center writes out: "can u tell me how to cancel my sub".
_SHORTHAND = {
    "u": "you",
    "ur": "your",
    "pls": "please",
    "plz": "please",
    "thx": "thanks",
    "pw": "password",
    "pwd": "password",
    "acct": "account",
    "sub": "subscription",
    "subs": "subscriptions",
    "msg": "message",
    "cuz": "because",
    "abt": "about",
}
_ADDRESS = re.compile(r"\S+@\S+|\bhttps?://\S+|\bwww\.\S+")
_LETTERS = re.compile(r"[a-z]+")
_LETTERS_ANY_CASE = re.compile(r"(?<![\w@.-])[A-Za-z]+(?![\w@-])")  # a word of letters only, not part of an address or code
# What a visitor has with some company: "my uber account", "my gym membership". Such a thing of
# a company the help center never names that way is someone else's, whatever else matches.
_OWNED = frozenset(
    {"account", "accounts", "membership", "memberships", "subscription", "subscriptions", "rewards", "order", "orders"}
    | {"delivery", "deliveries", "package", "parcel", "password", "login", "profile", "username", "app"}
)
# "my order from amazon", "a kettle i bought at walmart": where something was bought.
_PURCHASED = frozenset({"bought", "ordered", "purchased", "order", "orders", "purchase", "kettle", "kettles", "it", "one"})
_VIA = frozenset({"from", "at", "on", "through", "via", "with"})
_SHOP_VIA = frozenset({"from", "at"})  # a name the help center uses is a shop after these, a channel after "through"
# A thing the visitor says is not the company's ("a different brand", "isn't a brewlo"); a shop is
# not a brand: "a kettle i bought from another store" may be returned through that store.
_NOT_OURS = (
    r"\b(?:a|an|another|other|different|some)\s+(?:brand|make|manufacturer)\b"
    r"|\b(?:not|isn'?t|aren'?t)\s+(?:a\s+|an\s+|from\s+)?{company}\b|\bnon-?{company}\b"
)
# A person's, typed without the apostrophe ("my sisters account"): not a company's.
_PEOPLES = frozenset(
    f"{person}s"
    for person in [
        "mom",
        "mum",
        "mam",
        "dad",
        "mother",
        "father",
        "parent",
        "sister",
        "brother",
        "sibling",
        "son",
        "daughter",
        "kid",
        "child",
        "wife",
        "husband",
        "partner",
        "girlfriend",
        "boyfriend",
        "fiance",
        "fiancee",
        "friend",
        "roommate",
        "flatmate",
        "housemate",
        "neighbor",
        "neighbour",
        "boss",
        "colleague",
        "grandma",
        "grandpa",
        "grandmother",
        "grandfather",
        "aunt",
        "uncle",
        "cousin",
        "niece",
        "nephew",
        "nan",
        "gran",
    ]
) | {"childrens"}
# Whether something is safe: answered only from a passage about all of what the question names.
_SAFETY = re.compile(r"(?i)\b(safe|safely|safety|unsafe|dangerous|danger|hazard\w*|toxic|harmful|risky)\b")
# A code: letters, an optional hyphen, digits ("e-101", "pay-409", "e203").
_CODE = re.compile(r"^([a-z]{1,4})-?([0-9]{1,6})$")
_CODE_IN_TEXT = re.compile(r"(?i)\b([a-z]{1,4})-?([0-9]{1,6})\b")
_RAW_WORD = re.compile(r"[A-Za-z][A-Za-z0-9&']*")
# What a visitor has with a company: "my amazon order", "my apple id password".
_HELD = frozenset({"account", "accounts", "membership", "subscription", "order", "orders", "password", "login", "username"})
# Contractions typed without the apostrophe ("cant", "whats"): chat English, not a topic.
_BARE_CONTRACTIONS = frozenset(
    [
        "cant",
        "dont",
        "doesnt",
        "didnt",
        "wont",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "havent",
        "hasnt",
        "wouldnt",
        "shouldnt",
        "couldnt",
        "whats",
        "thats",
        "theres",
        "heres",
        "hows",
        "wheres",
        "im",
        "ive",
        "ill",
        "id",
        "youre",
        "theyre",
        "lets",
    ]
)
_FOLLOW_UP = re.compile(
    r"(?i)^(and|also|or|what about|how about|what if|but|then|so)\b|\b(it|that|this|those|these|they|them|its|one)\b"
)
# A follow-up-like message with fewer words of its own than this is never looked up alone:
# "how often?" after the descaling steps found the filter FAQ's "Every 3 months" on its own.
_OWN_TOPIC_WORDS = 2
# Where a sentence asks its next question: "how do i descale and how often should i do it?".
_NEXT_QUESTION = re.compile(
    r"(?i)(?:,\s*|;\s*|\s+)(?:and|also|plus)\s+(?=(?:how|what|when|where|which|why|can|could|do|does|is|are|will|should)\b)"
)
# A part that is a question of its own: a question mark, or a question word first ("would love
# to just throw it in with the plates" is not one, though "would" may open a question).
_QUESTION = re.compile(r"(?i)\?|^\W*(?:how|what|when|where|which|why|who)\b")
_MAX_QUESTIONS = 3  # questions of one message answered each; a longer list is answered as one
# A lead-in's end: "I have a question about my kettle: what's its capacity?" is two parts.
_LEAD_IN_END = re.compile(r"(?<=\w):\s+")
FOLLOW_UP_CHAIN = 3  # at most this many user messages searched as one: a follow-up of a follow-up and its question


class AnswerMode(StrEnum):
    EXTRACTIVE = "extractive"  # the composer answers: the help center's own sentences
    GENERATIVE = "generative"  # the generator writes, the guard checks, the composer is the fallback


class AnswerPath(StrEnum):
    COMPOSED = "composed"  # the help center's own sentences that answer the question
    GENERATED = "generated"  # model answer, every sentence supported by the passages
    FALLBACK = "fallback"  # nothing the model wrote passed the guard: the composer's answer instead
    NOT_SURE = "not_sure"  # retrieval was not confident enough to answer: offer a human
    ERROR = "error"  # the generator failed or timed out
    BUSY = "busy"  # every generation slot was taken: the composer's answer, at once, instead of a long wait
    SMALL_TALK = "small_talk"  # a greeting, thanks or goodbye: a friendly line, no search, no sources
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
    quoted: str = ""  # composed, fallback and busy paths: the article text the answer quotes
    handoff_reason: str = ""  # why a person was offered: not_sure, requested, repeated, frustrated, error
    prompt_version: str = PROMPT_VERSION
    evidence: list[Evidence] = field(default_factory=list)  # the passages the answer was written from


@dataclass(frozen=True, slots=True)
class Lookup:
    """What one search found, and what the gate weighs: retrieval, the sentences that answer
    the message itself, and what in the message the help center does not speak of."""

    search: SearchResult
    composition: Composition | None
    unknown: int = 0  # topic words the help center never uses
    names: int = 0  # ... of which read as names ("spotify", "nespresso")
    owners: int = 0  # other companies' accounts or orders it asks about ("my uber account")
    codes: int = 0  # codes of a kind the help center lists (E-101, E-410) that it does not list ("E-203")
    unsafe: int = 0  # topic words it never uses in a sentence that asks whether something is safe or dangerous
    wrong_kind: bool = False  # the quote has no amount for "how long/much/many", or not the thing "how many" counts
    other_code: bool = False  # the question names a code the help center lists, and the quoted passage does not
    partners: int = 0  # accounts or orders with a company the help center names ("my amazon order", "my paypal account")
    brands: int = 0  # things of a name the help center never uses ("a smeg kettle", "my xfinity router")
    unsure: tuple[int, ...] = ()  # places of the message's questions it is not sure about, when it answers others
    # ... and for those of them close enough to suggest one, their place and closest quote
    suggestions: tuple[tuple[int, Composition], ...] = ()


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


# What `frustration` returns when it finds any; "repeated" also when the answer would repeat the last one.
FRUSTRATION_REASONS = frozenset({"repeated", "frustrated"})


def frustration(message: str, history: Sequence[HistoryTurn]) -> str:
    """'repeated' when the visitor asks the same thing again, 'frustrated' for angry text, else ''."""
    asked = _sentence_key(message)
    words = set(_WORD.findall(asked))
    for turn in history:
        if turn.role != "user":
            continue
        before = _sentence_key(turn.text)
        other = set(_WORD.findall(before))
        if before == asked or (len(words) >= 3 and len(words & other) / len(words | other) >= 0.8):
            return "repeated"
    return "frustrated" if _FRUSTRATED.search(message) else ""


def answered_before(message: str, quote: str, history: Sequence[HistoryTurn]) -> bool:
    """Whether a message that asks nothing new (a statement: "it's on the base already" after
    the heating checklist) would get the very quote one of the last answers gave (the one before
    may be the offer of a person: "still not working" after "that didn't help"). Saying it twice helps
    no one; a person may. A question answered by the same quote ("and the annual plan?" after
    the plans) is only the visitor not having read all of it."""
    if _ASKS.search(message):
        return False
    said = [turn.text for turn in history if turn.role == "assistant"][-_ANSWERS_REMEMBERED:]
    return any(" ".join(quote.split()) in " ".join(text.split()) for text in said)


def accepts_person(message: str, history: Sequence[HistoryTurn]) -> bool | None:
    """The visitor's answer to the last answer's offer of a person: True for "yes please" (which
    got "I'm not sure about that" again), False for "no thanks", None when the last answer
    offered none or the message is something else. A bare "ok" accepts only an offer put as a
    question ("Would you like me to connect you ...?"), not "I can connect you ..."."""
    last = next((t.text.rstrip() for t in reversed(history) if t.role == "assistant"), "")
    asked = last.endswith((OFFER_QUESTION, SUGGESTION_OFFER))
    if not (asked or last.endswith(OFFER_PERSON)):
        return None
    if _ACCEPTED.match(message) or (asked and _OK.match(message)):
        return True
    return False if _DECLINED.match(message) else None


def is_follow_up(message: str) -> bool:
    """Whether a message leans on the one before it: "and to canada?", "is that free?"."""
    return bool(_FOLLOW_UP.search(message)) or len(message.split()) <= 4


def quoted_titles(history: Sequence[HistoryTurn]) -> frozenset[str]:
    """The titles of the articles the last answer quoted ('From our article "Title"', 'And from
    "Title"'): what a follow-up most likely asks more about. "how long does it take?" after the
    descaling steps is the descaling's 20 minutes, not a recalibration's 5."""
    for turn in reversed(history):
        if turn.role == "assistant":
            return frozenset(match.group(1) for match in QUOTE_FRAMING.finditer(turn.text) if match.group(1))
    return frozenset()


def standalone_query(message: str, history: Sequence[HistoryTurn], *, follows: bool = False) -> str:
    """A follow-up ("and how much does that cost?") joined to the user questions it follows;
    `follows`: join `message` even when it does not read like one.

    A follow-up of a follow-up reaches back to the question that named the topic: after "can i
    return my kettle?" and "what if i live in germany?", "is that free?" is searched with both
    (joined only to the message before it, it found the Club's free trial). At most
    `FOLLOW_UP_CHAIN` messages, so a long exchange does not drown the newest one.

    Deterministic on purpose: the bundled 270M base model cannot rewrite questions reliably,
    and the retriever only needs the missing topic words.
    """
    earlier = [t.text for t in history if t.role == "user"]
    if not earlier or not (follows or is_follow_up(message)):
        return message
    parts = [message]
    for previous in reversed(earlier):
        parts.insert(0, previous)
        if not is_follow_up(previous) or len(parts) >= FOLLOW_UP_CHAIN:
            break
    return " ".join(parts)


class Assistant:
    """Answers one message. `generator` is needed only in generative mode: an extractive
    assistant never loads a model."""

    def __init__(
        self,
        retriever: Retriever,
        composer: AnswerComposer,
        *,
        generator: Generator | None = None,
        checker: GroundednessChecker | None = None,
        mode: AnswerMode = AnswerMode.EXTRACTIVE,
        prompt_builder: PromptBuilder | None = None,
        confidence_threshold: float = 0.35,
        relevance_threshold: float = 0.0,
        suggestion_threshold: float | None = None,
        max_unknown_words: int | None = None,
        unknown_word_penalty: float = 0.0,
        max_name_words: int | None = None,
        name_word_penalty: float = 0.0,
        top_k: int = 4,
        max_new_tokens: int = 128,
        timeout_s: float = 60.0,
        max_message_chars: int = 2000,
        max_concurrent_generations: int | None = None,
        first_text_deadline_s: float | None = None,
        company: str = "Brewlo",
        fix_typos: bool = True,
    ) -> None:
        if not 0 <= confidence_threshold <= 1:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        if mode is AnswerMode.GENERATIVE and (generator is None or checker is None):
            raise ValueError("generative mode needs a generator and a groundedness checker")
        self._retriever = retriever
        self._composer = composer
        self._generator = generator
        self._checker = checker
        self.mode = mode
        self.prompts = prompt_builder or (
            PromptBuilder(generator.count_tokens, company=company, format_chat=generator.format_chat)
            if generator is not None
            else PromptBuilder(len, company=company)  # extractive: only its injection filter is used
        )
        self._threshold = confidence_threshold
        self.fix_typos = fix_typos  # the visitor's typos of the help center's words, fixed before the search (`spelled`)
        self.relevance_threshold = relevance_threshold
        # From this score up to relevance_threshold: not sure, with the closest passage quoted (None: never).
        self.suggestion_threshold = suggestion_threshold
        self.max_unknown_words = max_unknown_words
        self.unknown_word_penalty = unknown_word_penalty  # taken off the best sentence's score per unknown word
        self.max_name_words = max_name_words
        self.name_word_penalty = name_word_penalty  # taken off the best sentence's score per name word
        self._vocabulary: tuple[str, frozenset[str]] = ("", frozenset())  # (index version, words of its public text)
        self._topics: frozenset[str] = frozenset()  # words of its public titles and headings, same version
        self._joined: tuple[str, frozenset[str]] = ("", frozenset())
        self._codes: tuple[str, dict[tuple[str, int], frozenset[str]]] = ("", {})
        self._surface: tuple[str, dict[str, int]] = ("", {})
        self._names: tuple[str, tuple[frozenset[str], frozenset[str]]] = ("", (frozenset(), frozenset()))
        self.company_name = company
        self._emphasis = self._composer.words(" ".join(_EMPHASIS))  # as `only_vents` compares them
        self._company = company.lower()
        self._top_k = top_k
        self._max_new_tokens = max_new_tokens
        self._timeout_s = timeout_s
        self.max_message_chars = max_message_chars
        if max_concurrent_generations is not None and max_concurrent_generations < 1:
            raise ValueError(f"max_concurrent_generations must be at least 1, got {max_concurrent_generations}")
        self._max_generating = max_concurrent_generations
        if first_text_deadline_s is not None and first_text_deadline_s <= 0:
            raise ValueError(f"first_text_deadline_s must be positive, got {first_text_deadline_s}")
        self._first_text_deadline_s = first_text_deadline_s
        self.generating = 0  # answers being generated now (this process)

    def warm_up(self) -> None:
        """Embed the sentences of every public passage, or read them from the last start's file beside the index."""
        snapshot = self._retriever.snapshot
        public = [c for c in snapshot.chunks if c.visibility is Visibility.PUBLIC]
        self._composer.warm_up(
            [c.text for c in public], store=snapshot.version_dir / VECTORS_FILE, headings=[(c.title, c.heading) for c in public]
        )
        self._public_vocabulary()
        self._surface_words()
        self._names_and_pairs()

    @property
    def model_id(self) -> str:
        """Who writes the answers: the generator's model, or the composer."""
        return self._generator.model_id if self.mode is AnswerMode.GENERATIVE and self._generator else "composer"

    async def respond(self, message: str, history: Sequence[HistoryTurn] = ()) -> AsyncGenerator[TurnEvent, None]:
        """Answer deltas (the composer's answer in one delta), then one `TurnDone`."""
        message = message.strip()
        if not message:
            raise ValueError("message is empty")
        if len(message) > self.max_message_chars:
            raise ValueError(f"message is {len(message)} characters; the limit is {self.max_message_chars}")
        started = time.perf_counter()
        accepted = accepts_person(message, history)
        reply = None if accepted else DECLINED_REPLY if accepted is False else small_talk_reply(message, self.company_name)
        if reply is not None:
            result = TurnResult(message, message, reply, path=AnswerPath.SMALL_TALK, confidence=1.0, model_id="composer")
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(reply)
            yield TurnDone(result)
            return
        if wants_human(message) or accepted:
            result = TurnResult(message, message, HUMAN_ANSWER, path=AnswerPath.HUMAN, handoff=True, confidence=1.0)
            result.handoff_reason = "requested"
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(HUMAN_ANSWER)
            yield TurnDone(result)
            return
        result = TurnResult(question=message, search_query=message, model_id=self.model_id)
        upset = frustration(message, history)
        # Not a follow-up's: "still not working" after the checklist is about what came before.
        # In the worker thread: after an index swap, the first angry message rebuilds the
        # vocabulary of titles and headings, a pass over every chunk.
        vents = upset == "frustrated" and not (history and is_follow_up(message))
        if vents and await asyncio.to_thread(self.only_vents, message):
            result.path, result.handoff, result.handoff_reason = AnswerPath.NOT_SURE, True, upset
            result.answer = VENTING_ANSWER
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(result.answer)
            yield TurnDone(result)
            return
        result.search_query, lookup = await asyncio.to_thread(self.look_up, message, history)
        search, composition = lookup.search, lookup.composition
        result.retrieval_s = time.perf_counter() - started
        result.confidence = search.confidence
        score = self._gate_score(lookup)
        sure = self._answerable(lookup, score)
        close = self._close(lookup, score)
        if composition is not None and (sure or close) and answered_before(message, composition.text, history):
            # "that didn't help", "i tried that already", "still not working" after an answer got
            # the same quote again, sure or as a suggestion: the help center has nothing more.
            result.path, result.handoff, result.answer = AnswerPath.NOT_SURE, True, REPEAT_ANSWER
            result.handoff_reason = upset or "repeated"
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(result.answer)
            yield TurnDone(result)
            return
        if not sure:
            result.path, result.handoff, result.answer = AnswerPath.NOT_SURE, True, NOT_SURE_ANSWER
            result.handoff_reason = "not_sure"
            if lookup.suggestions:  # several questions, none sure, some with a closest passage
                result.answer = ""
                self._add_unsure_parts(result, lookup)
            elif composition is not None and close:
                self._compose(result, composition, "", lead=f"{SUGGESTION_LEAD}\n\n")
                result.answer += f"\n\n{SUGGESTION_OFFER}"
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(result.answer)
            yield TurnDone(result)
            return
        assert composition is not None
        if self.mode is AnswerMode.EXTRACTIVE:
            self._compose(result, composition, "" if lookup.unsure else upset)
            if lookup.unsure:  # the message's other questions: not sure, and a person offered for them
                self._add_unsure_parts(result, lookup)
                result.handoff, result.handoff_reason = True, upset or "not_sure"
            result.path = AnswerPath.COMPOSED
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(result.answer)
            yield TurnDone(result)
            return
        async for event in self._generate(message, history, search.passages, composition, result, upset, started):
            yield event

    def look_up(self, message: str, history: Sequence[HistoryTurn] = ()) -> tuple[str, Lookup]:
        """What the gate weighs for `message` after `history`, and the query it was searched
        with: a follow-up joined to the questions before it, its quotes chosen with the
        articles the last answer quoted. Blocking (retrieval and embedding).

        A message that only reads like a follow-up (a pronoun, four words or fewer) is also
        looked up alone, and answered alone when that reading is the better one: sure where
        the joined one is not, or sure with a higher score; or, when neither is sure, the one
        that scores higher. Joined to the question before it, "theres a little lock symbol on
        the kettle and it wont do anything" after "can i buy just a new lid for my K1" found
        the spare parts FAQ, not the child lock: a visitor's second, unrelated question was
        answered worse than their first (tune: key facts 77 -> 63 of 90).

        Small talk around the question ("Hi! ...", "... Thanks!") is not searched for, and the
        sentences before a question that stands on its own are read like a message before it
        (`asked_and_context`)."""
        message, context = self.asked_and_context(without_small_talk(message))
        if context:
            history = [*history, HistoryTurn("user", context)]
        questions = self.questions_of(message)
        if len(questions) > 1:
            answered = self._look_up_each(questions, history)
            if answered is not None and answered[1].composition is not None:  # sure of one at least
                return answered
            whole = self._look_up_one(message, history)
            if answered is None or self._answerable(whole[1], self._gate_score(whole[1])):
                return whole
            return answered  # sure of none, even asked as one: each one's closest passage
        return self._look_up_one(message, history)

    def _look_up_one(self, message: str, history: Sequence[HistoryTurn]) -> tuple[str, Lookup]:
        query = standalone_query(message, history)
        if query == message:
            alone = self._search_and_compose(message, query)
            score = self._gate_score(alone)
            if self._answerable(alone, score) or self._close(alone, score):
                return query, alone
            # Nothing close on its own: it may lean on the question before it without a pronoun
            # ("how long does the link work?" after "how do i reset my password"). Joined, it is
            # taken only when that reading is sure and quotes an article the last answer quoted.
            # A question with a closest passage of its own is not joined: "how long should i
            # steep green tea" after a question on presets was made sure by it.
            topic = quoted_titles(history)
            query = standalone_query(message, history, follows=True)
            if query == message or not topic:
                return message, alone
            joined = self._search_and_compose(message, query, topic)
            composition = joined.composition
            same_topic = composition is not None and composition.passage.title in topic
            return (query, joined) if same_topic and self._answerable(joined, self._gate_score(joined)) else (message, alone)
        if len(self._composer.asked_words(message)) < _OWN_TOPIC_WORDS:  # "how often?", "is that free?"
            return query, self._search_and_compose(message, query, quoted_titles(history))
        joined = self._search_and_compose(message, query, quoted_titles(history))
        alone = self._search_and_compose(message, message)
        return (message, alone) if self._reads_alone(alone, joined) else (query, joined)

    def only_vents(self, message: str) -> bool:
        """Whether an angry message asks nothing and names at most one thing the help center's
        titles and headings speak of: "this is the worst kettle ever" got the safety instructions, "i'm so fed up
        with this kettle" the set-up steps. "my kettle still doesn't heat, ridiculous" names a
        problem, and is answered; so is "wifi not working", whose only angry words report it."""
        if _ASKS.search(message) or all(_REPORTS.fullmatch(m.group(0)) for m in _FRUSTRATED.finditer(message)):
            return False  # asks something, or its only angry words say what is broken: "wifi not working"
        said = self._topic_words(_FRUSTRATED.sub(" ", message)) - self._emphasis
        return len(said & self._topic_vocabulary()) < _OWN_TOPIC_WORDS

    def questions_of(self, message: str) -> list[str]:
        """The questions a message asks, when it asks several that each have two words of their
        own or more ("can i return my kettle? how long does the refund take?"); else [message]."""
        parts = [p for s in split_sentences(message) for p in _NEXT_QUESTION.split(s) if p and _QUESTION.search(p)]
        if len(parts) < 2 or any(len(self._composer.asked_words(p)) < _OWN_TOPIC_WORDS for p in parts):
            return [message]
        return parts[:_MAX_QUESTIONS]

    def _look_up_each(self, questions: list[str], history: Sequence[HistoryTurn]) -> tuple[str, Lookup] | None:
        """Each question looked up after the ones before it, and the answers of those that are
        sure quoted together, the first one's leading, and the others named (`unsure`), with their
        closest passage when it is close enough to suggest (`suggestions`). When none is sure, a
        lookup without a composition that holds only those suggestions; None when there are none
        either (the message is then looked up whole, as it is when that reading is sure). Asked as one, "can i
        return my kettle? how long does the refund take?" quoted the return window alone, and
        two questions in one message got the key facts of the one asked first 0.278 of the time
        (tune, bench/phrasings.py)."""
        found: list[tuple[str, Lookup]] = []
        unsure: list[int] = []
        suggestions: list[tuple[int, Composition]] = []
        first_close: tuple[str, Lookup] | None = None  # what a message sure of none is looked up as
        earlier = list(history)
        for place, question in enumerate(questions):
            query, lookup = self._look_up_one(question, earlier)
            score = self._gate_score(lookup)
            if self._answerable(lookup, score):
                found.append((query, lookup))
            else:
                unsure.append(place)
                if lookup.composition is not None and self._close(lookup, score):
                    suggestions.append((place, lookup.composition))
                    first_close = first_close or (query, lookup)
            earlier += [HistoryTurn("user", question), HistoryTurn("assistant", "")]
        if not found:
            if first_close is None:
                return None
            # Sure of none: no composition to answer with, each question's closest passage to suggest.
            query, first = first_close
            distinct = {c.passage.chunk.chunk_id: (place, c) for place, c in reversed(suggestions)}  # the first of each passage
            suggestions = sorted(distinct.values(), key=lambda pair: pair[0])
            return query, dataclasses.replace(first, composition=None, unsure=tuple(unsure), suggestions=tuple(suggestions))
        (query, lead), rest = found[0], found[1:]
        assert lead.composition is not None
        quotes = list(lead.composition.also)
        quoted = lead.composition.quoted
        for _, other in rest:
            composition = other.composition
            assert composition is not None
            if composition.text not in quoted:
                quotes.append(Quote(composition.text, composition.passage, composition.relevance))
                quoted += "\n" + composition.text
        # A suggestion from a passage quoted already says nothing of its own.
        shown = {p.chunk.chunk_id for p in lead.composition.passages} | {q.passage.chunk.chunk_id for q in quotes}
        suggestions = [(place, c) for place, c in suggestions if c.passage.chunk.chunk_id not in shown]
        return " ".join(q for q, _ in found), dataclasses.replace(
            lead,
            composition=dataclasses.replace(lead.composition, also=tuple(quotes)),
            unsure=tuple(unsure),
            suggestions=tuple(suggestions),
        )

    def asked_and_context(self, message: str) -> tuple[str, str]:
        """What a message of several sentences asks, and the sentences around it ("" when it is
        all question): its asking sentences (a question mark or a question's first word), or
        else its last one, when they have two words of their own or more. "I bought a Brewlo
        kettle last month. my microwave turns on but doesn't heat food" was searched whole and
        answered from our articles (tune: out of scope "not sure" 0.969 -> 0.786 with that
        sentence before each question); "... unless i click a link. legit??" asks about the
        story, and is kept whole."""
        sentences = [clause for sentence in split_sentences(message) for clause in _LEAD_IN_END.split(sentence) if clause]
        asking = [s for s in sentences if _ASKS.search(s)] or sentences[-1:]
        if len(asking) == len(sentences) or len(self._composer.asked_words(" ".join(asking))) < _OWN_TOPIC_WORDS:
            return message, ""
        return " ".join(asking), " ".join(s for s in sentences if s not in asking)

    def _reads_alone(self, alone: Lookup, joined: Lookup) -> bool:
        """Whether a message that reads like a follow-up is better answered on its own."""
        alone_score, joined_score = self._gate_score(alone), self._gate_score(joined)
        alone_sure, joined_sure = self._answerable(alone, alone_score), self._answerable(joined, joined_score)
        if alone_sure != joined_sure:
            return alone_sure
        if alone_score is None:
            return False
        return joined_score is None or alone_score > joined_score or (alone_sure and alone_score == joined_score)

    def _search_and_compose(self, message: str, query: str, topic: Collection[str] = ()) -> Lookup:
        """Retrieval, the sentences that answer the message itself, and what of the message the
        help center does not speak of (one worker-thread hop). `topic`: for a follow-up, the
        titles of the articles the answer before it quoted."""
        joined = query != message  # a follow-up joined to the questions before it; else the same text
        if self.fix_typos:
            message = self.spelled(message)
            query = self.spelled(query) if joined else message
        message = self.written_codes(message)
        query = self.written_codes(query) if joined else message
        search = self._retriever.search(query, self._top_k)
        # Retrieval embedded the message already unless a follow-up was joined to the one before it.
        vector = search.query_vector if search.query == message.strip() else None
        listed = self.listed_codes(message)
        composition = self._composer.compose(
            message,
            search.passages,
            drop=self.prompts.looks_like_injection,
            question_vector=vector,
            topic=topic,
            codes=listed,
            context_vector=search.query_vector if vector is None else None,
        )
        # Whether something is safe is asked in a sentence; only what that sentence names must be
        # known: "is the kettle dishwasher safe? would love to throw it in with the plates".
        asks_safe = [s for s in split_sentences(message) if _SAFETY.search(s)]
        counts_unknown = self.max_unknown_words is not None or self.unknown_word_penalty > 0
        unknown = len(self._topic_words(message) - self._public_vocabulary()) if counts_unknown else 0
        unsafe = len(self._topic_words(" ".join(asks_safe)) - self._public_vocabulary()) if asks_safe else 0
        counts_names = self.max_name_words is not None or self.name_word_penalty > 0
        named = self.name_words(message)  # once: the name, brand and shop checks below all read them
        names = len(named) if counts_names else 0
        owners, codes = len(self.foreign_owners(message)), len(self.unknown_codes(message))
        wrong_kind = composition is not None and not self._composer.answers_kind(message, composition.quoted)
        other_code = bool(listed) and composition is not None and not self._composer.names_code(composition.passage, listed)
        partners = len(self.partner_owners(message, named))
        brands = len(self.branded_things(message, named)) if counts_names else 0
        return Lookup(search, composition, unknown, names, owners, codes, unsafe, wrong_kind, other_code, partners, brands)

    def written_codes(self, text: str) -> str:
        """`text` with the codes the help center lists written as it writes them: "e410" is
        "E-410" there, and neither the word index nor the embedder takes one for the other."""
        known = self._known_codes()
        if not known:
            return text
        vocabulary = self._public_vocabulary()

        def written(match: re.Match[str]) -> str:
            prefix, number = match.group(1).lower(), match.group(2)
            hyphened = f"{prefix}-{number}"
            if number in known.get((prefix, len(number)), ()) and hyphened in vocabulary:
                return hyphened.upper()
            return match.group(0)

        return _CODE_IN_TEXT.sub(written, text)

    def listed_codes(self, message: str) -> set[str]:
        """Codes in the message that the help center lists and writes with a hyphen, returned
        without it: "e410" for "E-410" or "e410". A hyphen marks a code that names one entry
        (an error, a status); a model name ("K1", "K2") runs through many articles that do not
        repeat it, and restricting the quote to those that do lost the voltage and warranty
        answers for "my K1" questions."""
        vocabulary = self._public_vocabulary()
        return {p + n for _, p, n, listed in self._codes_of_listed_kinds(message) if listed and f"{p}-{n}" in vocabulary}

    def unknown_codes(self, message: str) -> set[str]:
        """Codes in the message of a kind the help center lists, that it does not list: "E-203"
        when it explains E-101, E-102, E-205 ... Quoting E-101's article to it would answer
        another code. A kind is a prefix and a number of digits that the help center uses for
        at least two codes (one example, like an order number, is not a list)."""
        return {word for word, _, _, listed in self._codes_of_listed_kinds(message) if not listed}

    def _codes_of_listed_kinds(self, message: str) -> Iterator[tuple[str, str, str, bool]]:
        """(word, prefix, number, listed) for each code in the message of a kind the help center
        lists (`_known_codes`), and whether it lists that code itself."""
        known = self._known_codes()
        for word in self._composer.words(_ADDRESS.sub(" ", message)):
            code = _CODE.match(word)
            if code is None:
                continue
            prefix, number = code.group(1), code.group(2)
            numbers = known.get((prefix, len(number)))
            if numbers is not None:
                yield word, prefix, number, number in numbers

    def _known_codes(self) -> dict[tuple[str, int], frozenset[str]]:
        """The help center's codes by kind (prefix, digits), kinds with at least two codes."""
        vocabulary = self._public_vocabulary()
        if self._codes[0] != self._vocabulary[0]:
            kinds: dict[tuple[str, int], set[str]] = {}
            for word in vocabulary:
                if code := _CODE.match(word):
                    kinds.setdefault((code.group(1), len(code.group(2))), set()).add(code.group(2))
            self._codes = (self._vocabulary[0], {k: frozenset(v) for k, v in kinds.items() if len(v) >= 2})
        return self._codes[1]

    def name_words(self, message: str) -> set[str]:
        """Words of the message that the help center never uses and that are not everyday
        English either: "spotify", "costco", "nespresso", "keurig" name someone else's product
        or shop. Everyday English is what the embedder's vocabulary holds as one word piece
        (the word, or it without a plural or -ed/-ing ending); chat spellings ("cant",
        "wifi" for the help center's "Wi-Fi") are not names."""
        vocabulary = self._public_vocabulary()
        joined = self._joined_vocabulary()
        names = set()
        for word in _LETTERS.findall(_ADDRESS.sub(" ", message.lower())):
            stems = self._composer.words(word)
            if not stems or stems <= vocabulary or word in _BARE_CONTRACTIONS or word in joined:
                continue
            if not self._composer.is_everyday_word(word):
                names.add(word)
        return names

    def foreign_owners(self, message: str) -> set[str]:
        """Companies other than ours whose account, membership or order the message asks about:
        "my uber account", "my gym membership", "my spotify account". The word before such a
        thing is someone else's when the help center never uses it at all. A person's ("my
        sister's account", "my sisters account") is not a company's; a name the help center does use ("my PayPal
        account") may be about paying us, and is `partner_owners`'s."""
        vocabulary = self._public_vocabulary()
        words = [w.lower() for w in _RAW_WORD.findall(_ADDRESS.sub(" ", message))]
        owners = set()
        for owner, thing in itertools.pairwise(words):
            if thing not in _OWNED or owner.endswith("'s") or owner in STOPWORDS or owner == self._company:
                continue
            if owner in _PEOPLES:
                continue  # a person's, typed without the apostrophe: "my sisters account"
            stems = self._composer.words(owner)
            if stems and not stems <= vocabulary:
                owners.add(owner)
        return owners

    def branded_things(self, message: str, names: set[str] | None = None) -> set[str]:
        """Things the message names by a brand the help center never uses (a `name_words` word
        right before one of the help center's words), or says are not the company's: "how do i
        descale a smeg kettle" and "my kettle from a different brand is leaking" are about
        someone else's kettle, however well our articles match them. Such an answer may be
        quoted, never as sure: "oat milk" reads the same way. `names`: the message's
        `name_words`, when the caller has them."""
        company = re.escape(self._company)
        found = {m.group(0).lower() for m in re.finditer(_NOT_OURS.format(company=company), message, re.IGNORECASE)}
        names = self.name_words(message) if names is None else names
        if not names:
            return found
        vocabulary = self._public_vocabulary()
        words = [w.lower() for w in _RAW_WORD.findall(_ADDRESS.sub(" ", message))]
        return found | {
            f"{name} {thing}"
            for name, thing in itertools.pairwise(words)
            if name in names and (stems := self._composer.words(thing)) and stems <= vocabulary
        }

    def partner_owners(self, message: str, names: set[str] | None = None) -> set[str]:
        """Companies the help center names (always capitalised there: "PayPal", "Amazon", "Apple")
        whose account, order or password the message speaks of, in words the help center never
        puts together: "my amazon order", "my apple id password", "my paypal account got hacked".
        Often about another company ("reset my amazon account password" got our password
        reset), as often about us ("will the refund go back to my paypal account"): such an
        answer may be quoted, never as sure. "my alexa app" is the help center's own words.
        `names`: the message's `name_words`, when the caller has them (`_bought_elsewhere`)."""
        capitalised, pairs = self._names_and_pairs()
        words = [w.lower() for w in _RAW_WORD.findall(_ADDRESS.sub(" ", message))]
        held = {
            owner
            for owner, thing in itertools.pairwise(words)
            if thing in _HELD
            and owner in capitalised
            and owner not in STOPWORDS  # "I" is always capitalised too
            and owner != self._company
            and f"{owner} {thing}" not in pairs
        }
        named = self.name_words(message) if names is None else names
        return held | self._bought_elsewhere(words, named, capitalised, pairs)

    def _bought_elsewhere(
        self, words: list[str], named: set[str], capitalised: frozenset[str], pairs: frozenset[str]
    ) -> set[str]:
        """Shops an order or a purchase was made with, by name: "my order from amazon hasn't
        arrived" got our order tracking as a sure answer. A name the help center never uses, or
        one it does but never after that word ("from amazon"; "through google play" is a
        channel, and ours). Never sure, still quoted: "i bought it from a shop, can i return it
        to you" is ours."""
        return {
            shop
            for thing, via, shop in zip(words, words[1:], words[2:], strict=False)
            if (thing in _HELD or thing in _PURCHASED)
            and via in _VIA
            and shop != self._company
            and (shop in named or (shop in capitalised and via in _SHOP_VIA and f"{via} {shop}" not in pairs))
        }

    def _names_and_pairs(self) -> tuple[frozenset[str], frozenset[str]]:
        """The help center's public words that it always capitalises (names: "paypal", "amazon"),
        and every pair of neighbouring words it writes ("alexa app"), in lower case."""
        snapshot = self._retriever.snapshot
        if self._names[0] != snapshot.version:
            capitalised: set[str] = set()
            lower: set[str] = set()
            pairs: set[str] = set()
            for chunk in snapshot.chunks:
                if chunk.visibility is Visibility.PUBLIC:
                    raw = _RAW_WORD.findall(f"{chunk.title} {chunk.heading} {chunk.text}")
                    for word in raw:
                        (capitalised if word[0].isupper() else lower).add(word.lower())
                    pairs.update(f"{a} {b}".lower() for a, b in itertools.pairwise(raw))
            self._names = (snapshot.version, (frozenset(capitalised - lower), frozenset(pairs)))
        return self._names[1]

    def _joined_vocabulary(self) -> frozenset[str]:
        """The help center's hyphenated words written together ("wi-fi" -> "wifi")."""
        vocabulary = self._public_vocabulary()
        if self._joined[0] != self._vocabulary[0]:
            self._joined = (self._vocabulary[0], frozenset(w.replace("-", "") for w in vocabulary if "-" in w))
        return self._joined[1]

    def _topic_words(self, message: str) -> set[str]:
        """The message's words that name a topic: no addresses, links, numbers or codes, which
        a visitor adds to an in-scope question ("I'm ana@example.com, order 4411")."""
        return {w for w in self._composer.words(_ADDRESS.sub(" ", message)) if w.isalpha()}

    def spelled(self, text: str) -> str:
        """`text` with the visitor's typos of the help center's words fixed: "descal my kettel"
        is "descale my kettle". A word is fixed only when neither the help center (as it is or
        inflected) nor everyday English has it, and one help-center word is a single edit
        away (two from nine letters on; a swap of neighbours is one), with the same first
        letter (names rarely differ from our words there only: "nespresso" is not
        "espresso"), five letters at least ("ikea" is not "idea"). Ties go to the word the
        help center uses most. Chat shorthand the help center does not use is written out ("how
        do i reset my pw" was "not sure")."""
        counts = self._surface_words()
        vocabulary = self._public_vocabulary()

        def fixed(match: re.Match[str]) -> str:
            word = match.group(0)
            lower = word.lower()
            if lower in _SHORTHAND and lower not in counts:  # "my pw", "cancel my sub"
                return _SHORTHAND[lower]
            if len(lower) < 5 or lower in counts or self._composer.words(lower) <= vocabulary:
                return word
            if self._composer.is_everyday_word(lower):
                return word
            limit = 1 if len(lower) < 9 else 2
            found = [
                (distance, -counts[candidate], candidate)
                for candidate, distance, _ in process.extract(
                    lower, counts.keys(), scorer=OSA.distance, score_cutoff=limit, limit=None
                )
                if candidate[0] == lower[0]
            ]
            return min(found)[2] if found else word

        return _LETTERS_ANY_CASE.sub(fixed, text)

    def _surface_words(self) -> dict[str, int]:
        """The help center's public words as written (lower case letters), with how often each occurs."""
        snapshot = self._retriever.snapshot
        if self._surface[0] != snapshot.version:
            counts: Counter[str] = Counter()
            for chunk in snapshot.chunks:
                if chunk.visibility is Visibility.PUBLIC:
                    counts.update(_LETTERS.findall(f"{chunk.title} {chunk.heading} {chunk.text}".lower()))
            self._surface = (snapshot.version, dict(counts))
        return self._surface[1]

    def _public_vocabulary(self) -> frozenset[str]:
        snapshot = self._retriever.snapshot
        if self._vocabulary[0] != snapshot.version:
            words: set[str] = set()
            headings: set[str] = set()
            for chunk in snapshot.chunks:
                if chunk.visibility is Visibility.PUBLIC:
                    words |= self._composer.words(f"{chunk.title} {chunk.heading} {chunk.text}")
                    headings |= self._composer.words(f"{chunk.title} {chunk.heading}")
            self._vocabulary = (snapshot.version, frozenset(words))
            self._topics = frozenset(headings)
        return self._vocabulary[1]

    def _topic_vocabulary(self) -> frozenset[str]:
        """The words of the public articles' titles and headings: what the help center is about."""
        self._public_vocabulary()
        return self._topics

    def _answerable(self, lookup: Lookup, score: float | None) -> bool:
        """Whether the answer is sure, given the lookup's `_gate_score`."""
        return score is not None and score >= self.relevance_threshold and self._may_be_sure(lookup)

    def _gate_score(self, lookup: Lookup) -> float | None:
        """How well the best sentence answers the question, for the relevance and suggestion
        thresholds; None when nothing may be quoted at all.

        Confident retrieval, a sentence that answers the question (not one that only shares
        the company's name with it), and a question about things the help center speaks of:
        "Nespresso", "Spotify" or "Costco" in a question are names it has no word for, and
        each word it never uses makes the best sentence's score count for less; a name
        (which may also be an everyday word the embedder splits: "latte", "inbox") counts
        for more than other unknown words, but a sentence that answers well still wins. Never
        about another company's account, membership or order ("my uber account"), however well
        our own article on accounts matches it. Nor about a code the help center does not list
        ("E-203" where it lists E-101 to E-410): quoted, another code's line would read as its
        meaning. And a question whether something is safe is answered only when the help
        center speaks of everything its sentence names: "is the kettle safe to use on a boat?"
        matched "The kettle keeps its previous firmware, so it is always safe to use."."""
        composition = lookup.composition
        if composition is None or lookup.search.confidence < self._threshold or lookup.owners or lookup.codes:
            return None
        if lookup.unsafe:
            return None
        if self.max_name_words is not None and lookup.names > self.max_name_words:
            return None
        return composition.relevance - self.unknown_word_penalty * lookup.unknown - self.name_word_penalty * lookup.names

    def _close(self, lookup: Lookup, score: float | None) -> bool:
        """Whether the closest passage is worth quoting as a suggestion, given `_gate_score`. A
        follow-up's article just quoted is a closer suggestion than its score alone says."""
        if self.suggestion_threshold is None or score is None or lookup.composition is None:
            return False
        return score + lookup.composition.topic_bonus >= self.suggestion_threshold

    def _may_be_sure(self, lookup: Lookup) -> bool:
        """Whether the gate may call the answer sure at all: not when the quote lacks the kind of
        answer asked for (an amount, a price, the thing "how many" counts), not when the
        question names a listed code the quoted passage does not, nor another company's account
        or a thing of a brand the help center never names, and not when more of the
        question's words than `max_unknown_words` are ones the help center never uses. Such a
        question is still quoted the closest passage as a suggestion when it scores well
        enough: "is the kettle dishwasher safe? would love to just throw it in with the plates"
        has five, and the descaling article's "never put the kettle or its base in a
        dishwasher" is what it needs."""
        if lookup.wrong_kind or lookup.other_code or lookup.partners or lookup.brands:
            return False
        return self.max_unknown_words is None or lookup.unknown <= self.max_unknown_words

    @staticmethod
    def _add_unsure_parts(result: TurnResult, lookup: Lookup) -> None:
        """The questions of a message the bot is not sure of, by their place: those with nothing
        close named as not found, then each of the others with its closest quote ("can i return
        my kettle? im a uni student, any cheaper club price for me?" dropped the Club's prices
        for "I couldn't find an answer to your second question"), then the offer of a person."""
        suggested = dict(lookup.suggestions)
        missing = [place for place in lookup.unsure if place not in suggested]
        paragraphs = []
        if missing:
            places = " and ".join(_ORDINALS[i] for i in missing)
            which = f"{places} question" + ("s" if len(missing) > 1 else "")
            paragraphs.append(UNSURE_PART.format(which=which))
        for place, composition in lookup.suggestions:
            # Only the best article's units are shown, so only they are sources and checked quotes.
            lead = SUGGESTED_PART.format(which=f"{_ORDINALS[place]} question", cited=_cited(composition.passage))
            paragraphs.append(_introduced(lead, composition.text))
            result.sources.append(_source(composition.passage))
            result.evidence.append(_evidence(composition.passage))
            result.quoted += "\n" + composition.text
        if suggested:
            paragraphs.append(SUGGESTION_OFFER)
        else:
            paragraphs[-1] += f" {OFFER_QUESTION}"
        result.answer = "\n\n".join([result.answer, *paragraphs] if result.answer else paragraphs)

    def _compose(self, result: TurnResult, composition: Composition, upset: str, lead: str = "") -> None:
        best = composition.passage
        result.sources = _sources(composition.passages)
        result.evidence = [_evidence(p) for p in composition.passages]
        result.quoted = composition.quoted
        result.answer = _introduced(f"{lead}From our article {_cited(best)}:", composition.text)
        for quote in composition.also:  # a second article, or section, that answers nearly as well
            if quote.passage.document_id != best.document_id:
                intro = f"And from {_cited(quote.passage)}:"
            elif section := _section(quote.passage):
                intro = f'And in the same article, under "{section}":'
            else:
                intro = "And in the same article:"
            result.answer += "\n\n" + _introduced(intro, quote.text)
        if upset:
            result.handoff, result.handoff_reason = True, upset
            result.answer += f"\n\n{OFFER_PERSON}"

    async def _generate(
        self,
        message: str,
        history: Sequence[HistoryTurn],
        passages: list[Passage],
        composition: Composition,
        result: TurnResult,
        upset: str,
        started: float,
    ) -> AsyncGenerator[TurnEvent, None]:
        """The generator's answer, sentence by sentence through the guard; the composer's when none pass."""
        generator, checker = self._generator, self._checker
        assert generator is not None and checker is not None
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
            """Sentences the evidence supports and does not contradict, that do not echo the prompt."""
            checks = await asyncio.to_thread(checker.check, sentences, evidence, message)
            good = [c.sentence for c in checks if c.supported and not self.prompts.echoes_prompt(c.sentence)]
            result.removed_sentences += [c.sentence for c in checks if c.sentence not in good]
            for sentence in good:
                if result.time_to_first_token_s is None:
                    result.time_to_first_token_s = time.perf_counter() - started
                kept.append(sentence)
            return good

        if self._max_generating is not None and self.generating >= self._max_generating:
            # Admission control: a request queued behind a full generator would wait for
            # minutes and time out; the visitor gets the composer's answer now, with its source.
            self._compose(result, composition, upset, lead="Many people are asking right now, so here is the short answer. ")
            result.path = AnswerPath.BUSY
            result.total_s = result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(result.answer)
            yield TurnDone(result)
            return

        self.generating += 1
        try:
            # Counting the prompt's tokens needs the model: a generator closed by a swap since
            # this turn began raises GenerationError here, and the composer answers.
            prompt = self.prompts.build(message, passages, history, generator.context_window - self._max_new_tokens)
            result.sources = _sources(prompt.passages)
            result.evidence = [_evidence(p) for p in prompt.passages]
            evidence = [p.text for p in prompt.passages]  # what `checked` holds the sentences against
            request = GenerationRequest(
                prompt.text, max_new_tokens=self._max_new_tokens, stop=prompt.stop, timeout_s=self._timeout_s
            )
            # aclosing: leaving the loop early closes the stream now (cancelling the request),
            # not whenever the event loop gets round to finalising the generator.
            # The deadline holds only until the first checked sentence: a slow generator (a
            # loaded GPU, a remote server in trouble) must not keep the visitor waiting when the
            # composer's answer is ready. Nothing has been yielded while it can fire.
            async with (
                asyncio.timeout(self._first_text_deadline_s) as deadline,
                contextlib.aclosing(generator.stream(request, stats)) as stream,
            ):
                async for delta in stream:
                    buffer += delta
                    sentences, buffer = complete_sentences(buffer)
                    if sentences:
                        new, looping = fresh(sentences)
                        first = not kept
                        good = await checked(new) if new else []
                        if good:
                            deadline.reschedule(None)
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
        except TimeoutError:  # the first-text deadline (nothing was said yet): the composer answers now
            result.error = f"no checked sentence within {self._first_text_deadline_s:g} s"
            self._compose(result, composition, upset)
            result.path = AnswerPath.FALLBACK
            result.time_to_first_token_s = time.perf_counter() - started
            yield AnswerDelta(result.answer)
        except GenerationError as exc:
            result.error = str(exc)
            if kept:  # part of the answer was said: it stays, and a person is offered for the rest
                result.path, result.handoff, result.handoff_reason = AnswerPath.ERROR, True, "error"
            else:  # the composer is the floor: a failed generator still gets the visitor an answer
                self._compose(result, composition, upset)
                result.path = AnswerPath.FALLBACK
                result.time_to_first_token_s = time.perf_counter() - started
                yield AnswerDelta(result.answer)
        else:
            if kept:
                result.path = AnswerPath.GENERATED
                if upset:
                    result.handoff, result.handoff_reason = True, upset
                    yield AnswerDelta(f"\n\n{OFFER_PERSON}")
            else:
                self._compose(result, composition, upset)
                result.path = AnswerPath.FALLBACK
                result.time_to_first_token_s = time.perf_counter() - started
                yield AnswerDelta(result.answer)
        finally:
            self.generating -= 1
        if kept:
            # The offer was streamed only when the generation ended well, not after an error.
            result.answer = " ".join(kept) + (f"\n\n{OFFER_PERSON}" if result.handoff_reason in FRUSTRATION_REASONS else "")
        result.prompt_tokens, result.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        result.generator_ttft_s = stats.time_to_first_token_s
        result.total_s = time.perf_counter() - started
        yield TurnDone(result)


def _sentence_key(sentence: str) -> str:
    return " ".join(sentence.lower().split())


def _cited(passage: Passage) -> str:
    """A quote's article, and the section it sits under when the article has several: quoted to
    "is express delivery available in the eu?", the US section's "Express: 1 to 2 business days"
    read as the EU's without its heading, "United States"."""
    heading = _section(passage)
    return f'"{passage.title}", under "{heading}"' if heading else f'"{passage.title}"'


def _introduced(intro: str, quote: str) -> str:
    """A quote after what introduces it: on the next line when the quote is a list (its items
    each on a line of their own), else on the same line."""
    joiner = "\n" if "\n" in quote else " "
    return f"{intro}{joiner}{quote}"


def _section(passage: Passage) -> str:
    """The heading a passage sits under, as quoted to a visitor; empty when it is the article's
    own (its title, a PDF's page) or none."""
    # The innermost heading: in "Siri Shortcuts > Safety" the safety rules are every voice
    # assistant's, which the path would narrow to Siri's.
    heading = passage.chunk.heading.rpartition(HEADING_PATH_SEPARATOR)[2]
    if not heading or _PAGE_HEADING.match(heading) or heading.casefold() == passage.title.casefold():
        return ""
    return heading.replace('"', "'")  # 'App says "session expired"' inside the quotes that frame it


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
