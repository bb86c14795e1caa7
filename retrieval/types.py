"""Typed inputs and outputs of a search: filters in, passages with scores out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Visibility(StrEnum):
    """Who may see a passage. Website visitors only ever get `public` ones."""

    PUBLIC = "public"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One indexed chunk as stored on disk (row `row` of the vector index)."""

    row: int
    chunk_id: str
    document_id: str
    title: str
    heading: str
    text: str
    url: str | None
    source: str
    visibility: Visibility
    tags: tuple[str, ...] = ()
    kind: str = "article"

    def to_json(self) -> dict[str, object]:
        return {
            "row": self.row,
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "title": self.title,
            "heading": self.heading,
            "text": self.text,
            "url": self.url,
            "source": self.source,
            "visibility": self.visibility.value,
            "tags": list(self.tags),
            "kind": self.kind,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ChunkRecord:
        tags = data.get("tags") or []
        assert isinstance(tags, list)
        return cls(
            row=int(data["row"]),  # type: ignore[call-overload]
            chunk_id=str(data["chunk_id"]),
            document_id=str(data["document_id"]),
            title=str(data["title"]),
            heading=str(data.get("heading") or ""),
            text=str(data["text"]),
            url=str(data["url"]) if data.get("url") else None,
            source=str(data["source"]),
            visibility=Visibility(str(data["visibility"])),
            tags=tuple(str(t) for t in tags),
            kind=str(data.get("kind") or "article"),
        )


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Restricts a search. The default is what a website visitor may see."""

    visibility: frozenset[Visibility] = frozenset({Visibility.PUBLIC})
    tags: frozenset[str] = frozenset()
    document_ids: frozenset[str] = frozenset()

    @classmethod
    def for_agents(cls) -> SearchFilters:
        return cls(visibility=frozenset({Visibility.PUBLIC, Visibility.INTERNAL}))

    def allows(self, chunk: ChunkRecord) -> bool:
        if chunk.visibility not in self.visibility:
            return False
        if self.tags and not self.tags.intersection(chunk.tags):
            return False
        return not self.document_ids or chunk.document_id in self.document_ids


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk with its scores.

    `score` is the fused rank score (higher is better, only comparable within one search);
    `dense_score` the cosine similarity to the query; `confidence` the calibrated
    probability that this passage answers the question.
    """

    chunk: ChunkRecord
    score: float
    dense_score: float
    lexical_score: float
    confidence: float

    @property
    def text(self) -> str:
        return self.chunk.text

    @property
    def title(self) -> str:
        return self.chunk.title

    @property
    def url(self) -> str | None:
        return self.chunk.url

    @property
    def document_id(self) -> str:
        return self.chunk.document_id


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Ranked passages and the overall confidence that the top ones answer the query."""

    query: str
    passages: list[Passage] = field(default_factory=list)
    confidence: float = 0.0
    index_version: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The query's embedding, so a caller scoring sentences against the same text need not embed it again.
    query_vector: np.ndarray | None = field(default=None, repr=False, compare=False)
