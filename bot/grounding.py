"""Checks that each sentence of an answer is supported by the passages it was given."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.embedder import Embedder
from retrieval.lexical import STOPWORDS

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CITATION = re.compile(r"\s*\[\d+\]")
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


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


class GroundednessChecker:
    """A sentence is supported when it is close in meaning to some passage sentence
    (cosine >= `min_similarity`) or most of its content words appear in the passages
    (share >= `min_overlap`); and every number in it appears in the passage sentence it is
    closest to."""

    def __init__(self, embedder: Embedder, min_similarity: float = 0.6, min_overlap: float = 0.75) -> None:
        self._embedder = embedder
        self.min_similarity = min_similarity
        self.min_overlap = min_overlap

    def check(self, sentences: Sequence[str], passages: Sequence[str]) -> list[SentenceCheck]:
        if not sentences:
            return []
        evidence = [s for p in passages for s in split_sentences(p)] or [""]
        cleaned = [_CITATION.sub("", s).strip() for s in sentences]
        vectors = self._embedder.embed([*cleaned, *evidence])
        matrix = vectors[: len(cleaned)] @ vectors[len(cleaned) :].T
        similarity, closest = matrix.max(axis=1), matrix.argmax(axis=1)
        vocabulary = {w for p in passages for w in _WORD.findall(p.lower())}
        checks = []
        for sentence, text, score, best in zip(sentences, cleaned, similarity, closest, strict=True):
            words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
            overlap = sum(w in vocabulary for w in words) / len(words) if words else 0.0
            supported = bool(words) and (float(score) >= self.min_similarity or overlap >= self.min_overlap)
            # Prices, durations and limits must come from one place: "$49 per month" is wrong even
            # though "$49" and "per month" both occur, in different sentences.
            numbers = set(_NUMBER.findall(text))
            if supported and numbers and not numbers <= set(_NUMBER.findall(evidence[int(best)])):
                supported = False
            checks.append(SentenceCheck(sentence, supported, float(np.round(score, 4)), round(overlap, 4)))
        return checks
