"""Splits documents into chunks that follow headings and fit the embedder's token budget."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from knowledge_base.documents import Document, Section

# A chunk's heading is the path of headings it sits under, joined with this ("Siri Shortcuts > Safety").
HEADING_PATH_SEPARATOR = " > "
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True, slots=True)
class Chunk:
    document_id: str
    ordinal: int
    heading: str
    text: str

    @property
    def chunk_id(self) -> str:
        return f"{self.document_id}::{self.ordinal}"


def embedding_text(title: str, heading: str, text: str) -> str:
    """What gets embedded: the text with its title and heading path as context."""
    return f"{title}\n{heading}\n{text}" if heading else f"{title}\n{text}"


def faq_question(text: str) -> str | None:
    """The question of an FAQ chunk ("Q: ...\nA: ..."), or None when the text has no "Q: " line.

    It is embedded a second time on its own, so an entry is found by its question even
    when the answer is long or shares few words with the visitor's phrasing.
    """
    if not text.startswith("Q: "):
        return None
    question = text[3:].split("\nA: ", 1)[0].strip()
    return question or None


def _labelled(section: Section) -> str:
    return f"{section.headings[-1]}: {section.text}" if section.headings else section.text


class HeadingChunker:
    """One or more chunks per section, never spanning two headings.

    Sections are packed paragraph by paragraph (then sentence, then word) up to
    `max_tokens` word pieces including the title and heading; consecutive chunks of one
    section share about `overlap_tokens` of text. A section shorter than `min_tokens`
    joins the next one under the same parent heading when both fit. FAQ documents are a
    single chunk each, whatever their length.
    """

    def __init__(
        self, count_tokens: Callable[[str], int], max_tokens: int = 200, overlap_tokens: int = 32, min_tokens: int = 40
    ) -> None:
        if max_tokens <= 16:
            raise ValueError(f"max_tokens must be above 16, got {max_tokens}")
        if not 0 <= overlap_tokens < max_tokens // 2:
            raise ValueError(f"overlap_tokens must be in [0, max_tokens/2), got {overlap_tokens}")
        self._count = count_tokens
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.min_tokens = min_tokens

    @property
    def config(self) -> dict[str, int]:
        return {"max_tokens": self.max_tokens, "overlap_tokens": self.overlap_tokens, "min_tokens": self.min_tokens}

    def chunk(self, document: Document) -> list[Chunk]:
        if document.kind == "faq":
            text = "\n\n".join(s.text for s in document.sections)
            return [Chunk(document.id, 0, "", text)]
        pieces: list[tuple[str, str]] = []
        for section in self._merge_small(document.sections):
            heading = HEADING_PATH_SEPARATOR.join(section.headings)
            budget = self.max_tokens - self._count(embedding_text(document.title, heading, ""))
            pieces.extend((heading, text) for text in self._split(section.text, max(budget, 16)))
        return [Chunk(document.id, i, heading, text) for i, (heading, text) in enumerate(pieces)]

    def _merge_small(self, sections: tuple[Section, ...]) -> list[Section]:
        merged: list[Section] = []
        for section in sections:
            previous = merged[-1] if merged else None
            if (
                previous is not None
                and previous.headings[:-1] == section.headings[:-1]
                and self._count(previous.text) < self.min_tokens
                and self._count(previous.text) + self._count(section.text) <= self.max_tokens // 2
            ):
                # The merged chunk sits under the shared parent; each part keeps its own heading.
                merged[-1] = Section(section.headings[:-1], f"{_labelled(previous)}\n\n{_labelled(section)}")
            else:
                merged.append(section)
        return merged

    def _units(self, text: str, budget: int) -> list[str]:
        """Paragraphs, or sentences, or word runs: each within `budget` tokens."""
        units: list[str] = []
        for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
            if not paragraph:
                continue
            if self._count(paragraph) <= budget:
                units.append(paragraph)
                continue
            for sentence in _SENTENCE_END.split(paragraph):
                if self._count(sentence) <= budget:
                    units.append(sentence)
                    continue
                # Word pieces never span whitespace, so per-word counts add up exactly.
                current: list[str] = []
                used = 0
                for word in sentence.split():
                    size = self._count(word)
                    if current and used + size > budget:
                        units.append(" ".join(current))
                        current, used = [], 0
                    current.append(word)
                    used += size
                if current:
                    units.append(" ".join(current))
        return units

    def _split(self, text: str, budget: int) -> list[str]:
        units = self._units(text, budget)
        sizes = [self._count(u) for u in units]
        chunks: list[str] = []
        start = 0
        while start < len(units):
            end, used = start, 0
            while end < len(units) and (end == start or used + sizes[end] <= budget):
                used += sizes[end]
                end += 1
            chunks.append("\n\n".join(units[start:end]))
            if end >= len(units):
                break
            # Step back over trailing units worth at most overlap_tokens, but always advance.
            back, overlap = end, 0
            while back - 1 > start and overlap + sizes[back - 1] <= self.overlap_tokens:
                back -= 1
                overlap += sizes[back]
            start = back
        return chunks
