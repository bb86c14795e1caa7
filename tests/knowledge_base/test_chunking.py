from __future__ import annotations

import itertools

from knowledge_base.chunking import HeadingChunker, embedding_text
from knowledge_base.documents import Document, Section
from retrieval.embedder import SentenceEmbedder

SENTENCE = "The kettle heats one litre of water in about three minutes on a European socket."


def document(*sections: Section, kind: str = "article") -> Document:
    return Document(id="doc", title="Heating", source="doc.md", sections=sections, kind=kind)


def test_chunks_fit_the_budget_and_overlap(embedder: SentenceEmbedder) -> None:
    chunker = HeadingChunker(embedder.count_tokens, max_tokens=64, overlap_tokens=20)
    long_text = "\n\n".join(f"{i}. {SENTENCE}" for i in range(20))
    chunks = chunker.chunk(document(Section(("Speed",), long_text)))
    assert len(chunks) > 3
    for chunk in chunks:
        assert embedder.count_tokens(embedding_text("Heating", chunk.heading, chunk.text)) <= 64
        assert chunk.heading == "Speed"
    for first, second in itertools.pairwise(chunks):
        assert first.text.split("\n\n")[-1] == second.text.split("\n\n")[0], "consecutive chunks share text"
    covered = "\n\n".join(c.text for c in chunks)
    assert all(f"{i}. " in covered for i in range(20)), "no text is lost"
    assert [c.chunk_id for c in chunks] == [f"doc::{i}" for i in range(len(chunks))]


def test_chunks_never_cross_headings(embedder: SentenceEmbedder) -> None:
    chunker = HeadingChunker(embedder.count_tokens, max_tokens=200, min_tokens=5)
    chunks = chunker.chunk(document(Section(("A",), SENTENCE * 2), Section(("B",), SENTENCE * 2)))
    assert [c.heading for c in chunks] == ["A", "B"]


def test_small_sections_merge_under_their_parent(embedder: SentenceEmbedder) -> None:
    chunker = HeadingChunker(embedder.count_tokens, max_tokens=200, min_tokens=40)
    chunks = chunker.chunk(document(Section(("Errors", "E-101"), "Kettle empty."), Section(("Errors", "E-102"), "Lifted.")))
    assert len(chunks) == 1
    assert chunks[0].heading == "Errors"
    assert chunks[0].text == "E-101: Kettle empty.\n\nE-102: Lifted."


def test_a_single_huge_sentence_is_split_by_words(embedder: SentenceEmbedder) -> None:
    chunker = HeadingChunker(embedder.count_tokens, max_tokens=48, overlap_tokens=0)
    chunks = chunker.chunk(document(Section((), " ".join(["limescale"] * 300))))
    assert len(chunks) > 5
    assert all(embedder.count_tokens(embedding_text("Heating", "", c.text)) <= 48 for c in chunks)


def test_faq_entries_stay_one_chunk(embedder: SentenceEmbedder) -> None:
    chunker = HeadingChunker(embedder.count_tokens, max_tokens=32, overlap_tokens=0)
    faq = document(Section((), "Q: Why?\nA: " + SENTENCE * 5), kind="faq")
    assert len(chunker.chunk(faq)) == 1
