"""Checks that each sentence of an answer is supported by the passages it was given, and
contradicts none of them.

Support alone passes "The kettle can be placed in the dishwasher" (it shares most words with
"Never ... put the kettle ... in a dishwasher"), so a supported sentence must also agree with
the evidence sentence closest to it: the same polarity (never, not, cannot), no yes or no that
the evidence does not give, no name, place, brand, number or comparison the evidence lacks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from knowledge_base.chunking import faq_question
from retrieval.embedder import Embedder
from retrieval.lexical import STOPWORDS

# A sentence ends at . ! or ? and a space, but not inside an initialism: "ship to P.O. boxes", "e.g. tea".
_SENTENCE = re.compile(r"(?<=[.!?])(?<!\.[A-Za-z]\.)\s+")
_CITATION = re.compile(r"\s*\[\d+\]")
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATION = re.compile(
    r"(?i)\b(not|never|no|none|cannot|can't|cant|don't|doesn't|didn't|won't|isn't|aren't|wasn't|shouldn't|mustn't"
    r"|without|unable|neither|nor|only)\b|n't\b"
)
_YES_NO = re.compile(r"(?i)^\W*(yes|no|yeah|nope|sure|of course|absolutely|definitely)\b")
_COMPARISON = re.compile(r"(?i)\b(\w+er than|more|less|fewer|cheaper|faster|slower|better|worse|best|cheapest|most|least)\b")
_NAME = re.compile(r"(?<=[\w,;:)] )([A-Z][a-zA-Z0-9'-]+)")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def complete_sentences(buffer: str) -> tuple[list[str], str]:
    """Sentences that have ended in `buffer`, and the unfinished rest."""
    parts = _SENTENCE.split(buffer)
    if len(parts) == 1:
        return [], buffer
    return [p.strip() for p in parts[:-1] if p.strip()], parts[-1]


@dataclass(frozen=True, slots=True)
class SentenceCheck:
    sentence: str
    supported: bool
    similarity: float
    overlap: float
    contradiction: str = ""  # why a supported-looking sentence disagrees with its evidence


def contradiction(sentence: str, closest: str, evidence_text: str) -> str:
    """Why `sentence` disagrees with `closest` (its nearest evidence sentence), or ''."""
    if bool(_NEGATION.search(sentence)) != bool(_NEGATION.search(closest)):
        return "polarity"
    yes_no = _YES_NO.match(sentence)
    if yes_no and not _YES_NO.match(closest.removeprefix("A:").strip()):
        return "yes/no"
    numbers = set(_NUMBER.findall(sentence))
    if numbers and not numbers <= set(_NUMBER.findall(closest)):
        return "number"
    lowered = evidence_text.lower()
    names = [n for n in _NAME.findall(sentence) if n.lower() not in lowered]
    if names:
        return f"name: {names[0]}"
    compared = {m.lower() for m in _COMPARISON.findall(sentence)}
    if compared and not compared <= {m.lower() for m in _COMPARISON.findall(closest)}:
        return "comparison"
    return ""


class GroundednessChecker:
    """A sentence is supported when it is close in meaning to some passage sentence
    (cosine >= `min_similarity`) or most of its content words appear in the passages
    (share >= `min_overlap`); and every number in it appears in the passage sentence it is
    closest to."""

    def __init__(
        self, embedder: Embedder, min_similarity: float = 0.6, min_overlap: float = 0.75, same_question: float = 0.85
    ) -> None:
        self._embedder = embedder
        self.min_similarity = min_similarity
        self.min_overlap = min_overlap
        # An FAQ entry's "Yes"/"No" answers its own question: it backs a yes or no only for a
        # visitor's question at least this close to it (cosine).
        self.same_question = same_question

    def check(self, sentences: Sequence[str], passages: Sequence[str], question: str = "") -> list[SentenceCheck]:
        """One check per sentence, against the passages; `question`, the visitor's, decides
        whether an FAQ entry's yes or no is an answer to it."""
        if not sentences:
            return []
        evidence: list[str] = []
        asked_by: list[int] = []  # per evidence sentence: the index of its FAQ entry's question, or -1
        entries: list[str] = []
        for passage in passages:
            entry = -1
            if (ask := faq_question(passage)) is not None:
                entries.append(ask)
                entry = len(entries) - 1
            for sentence in split_sentences(passage):
                evidence.append(sentence)
                asked_by.append(entry)
        evidence, asked_by = evidence or [""], asked_by or [-1]
        cleaned = [_CITATION.sub("", s).strip() for s in sentences]
        asks = [question, *entries] if question and entries else []
        vectors = self._embedder.embed([*cleaned, *evidence, *asks])
        entry_match: list[float] = []
        if asks:
            asked = vectors[len(cleaned) + len(evidence) :]
            entry_match = (asked[1:] @ asked[0]).tolist()
        vectors = vectors[: len(cleaned) + len(evidence)]
        matrix = vectors[: len(cleaned)] @ vectors[len(cleaned) :].T
        similarity, closest = matrix.max(axis=1), matrix.argmax(axis=1)
        evidence_text = " ".join(passages)
        vocabulary = {w for p in passages for w in _WORD.findall(p.lower())}
        checks = []
        for sentence, text, score, best in zip(sentences, cleaned, similarity, closest, strict=True):
            words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
            overlap = sum(w in vocabulary for w in words) / len(words) if words else 0.0
            supported = bool(words) and (float(score) >= self.min_similarity or overlap >= self.min_overlap)
            # Prices, durations and limits must come from one place: "$49 per month" is wrong even
            # though "$49" and "per month" both occur, in different sentences.
            why = contradiction(text, evidence[int(best)], evidence_text) if supported else ""
            # "Can I use the app on a tablet? Yes, on iPads with iPadOS 16" says nothing of yes
            # to "will it run on iPadOS 15?".
            entry = asked_by[int(best)]
            another = entry >= 0 and (not asks or entry_match[entry] < self.same_question)
            if supported and not why and another and _YES_NO.match(text):
                why = "yes/no of another question"
            checks.append(SentenceCheck(sentence, supported and not why, float(np.round(score, 4)), round(overlap, 4), why))
        return checks
