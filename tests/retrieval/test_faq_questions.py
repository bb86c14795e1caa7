"""FAQ entries are found by their question as well as by the whole entry (index format 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.index_files import (
    FORMAT_VERSION,
    QUESTION_ROWS_FILE,
    QUESTIONS_FILE,
    IndexFormatError,
    current_version_dir,
    read_chunks,
    read_manifest,
    sha256_file,
    verify_checksums,
)
from retrieval.retriever import FITTED_FAQ_QUESTION_WEIGHT, Retriever
from retrieval.types import SearchFilters
from retrieval.vector_index import VectorIndex
from tests.conftest import EVAL_QUESTIONS

# The right entry's answer is a long procedure that shares few words with how visitors
# ask; the first entry's answer happens to talk about plans, holidays and being abroad.
FAQ = [
    (
        "What happens to my plan if my card expires?",
        "Your plan is put on hold and frozen until you add a new card. Even while you are abroad on holiday you can "
        "update the card in the app, and nothing is lost in the meantime.",
    ),
    (
        "Can I freeze my membership while I am on holiday?",
        "Yes. Under Profile > Brewlo Club > Billing choose Hold and pick a return date up to 90 days ahead. No charges "
        "are taken until that date, filter shipments skip automatically, and your recipes, presets and household "
        "members stay exactly as they were. You can end the hold early from the same screen.",
    ),
    (
        "Why was my account locked?",
        "After five wrong passwords we lock the account for 30 minutes to protect it. If you are travelling and signing "
        "in from a new country, we may also ask you to confirm a code sent by email.",
    ),
    (
        "Why does the kettle click after it boils?",
        "That is the thermostat relay releasing once the water reaches the target temperature; it is normal.",
    ),
]
ARTICLE = "---\ntitle: Descaling\n---\n## Steps\nFill the kettle with equal parts water and vinegar, boil, and rinse twice.\n"
RIGHT = "faq#can-i-freeze-my-membership-while-i-am-on-holiday"
ASKED = "i am travelling for two months, can my plan be frozen"


@pytest.fixture()
def faq_index(tmp_path: Path, embedder: SentenceEmbedder) -> Path:
    kb = tmp_path / "kb"
    kb.mkdir()
    with (kb / "faq.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerows(FAQ)
    (kb / "descaling.md").write_text(ARTICLE)
    report = KnowledgeBaseBuilder(tmp_path / "index", embedder).ingest([kb])
    assert not report.errors and len(report.added) == 5
    return tmp_path / "index"


def ranked(retriever: Retriever, query: str) -> list[str]:
    return [p.document_id for p in retriever.search(query, k=5, filters=SearchFilters.for_agents()).passages]


def test_an_entry_is_found_by_its_question_where_whole_entry_scoring_missed_it(
    faq_index: Path, embedder: SentenceEmbedder
) -> None:
    before = ranked(Retriever(faq_index, embedder, faq_question_weight=0), ASKED)
    now = ranked(Retriever(faq_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT), ASKED)
    assert before[0] == "faq#what-happens-to-my-plan-if-my-card-expires", "the whole entry alone ranks the wrong one first"
    assert before.index(RIGHT) > 0
    assert now[0] == RIGHT


def test_an_entrys_dense_score_mixes_its_question_and_whole_entry_cosines(faq_index: Path, embedder: SentenceEmbedder) -> None:
    query = "can i freeze my plan while i am on holiday"
    whole = Retriever(faq_index, embedder, faq_question_weight=0).search(query, k=5)
    both = Retriever(faq_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT).search(query, k=5)
    question_cosine = float(embedder.embed([FAQ[1][0]])[0] @ embedder.embed([query])[0])
    old = next(p for p in whole.passages if p.document_id == RIGHT)
    new = next(p for p in both.passages if p.document_id == RIGHT)
    weight = FITTED_FAQ_QUESTION_WEIGHT
    assert new.dense_score == pytest.approx(weight * question_cosine + (1 - weight) * old.dense_score, abs=1e-5)
    assert new.dense_score > old.dense_score, "the question alone is closer to how the visitor asked"
    assert len({p.chunk.chunk_id for p in both.passages}) == len(both.passages), "an entry comes back once"


def test_articles_are_scored_as_before(sample_index: Path, embedder: SentenceEmbedder) -> None:
    before = Retriever(sample_index, embedder, faq_question_weight=0)
    now = Retriever(sample_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT)
    questions = [json.loads(line)["question"] for line in EVAL_QUESTIONS.read_text().splitlines()[:20]]
    compared = 0
    for question in questions:
        old = {p.chunk.chunk_id: p for p in before.search(question, k=10).passages if p.chunk.kind != "faq"}
        new = {p.chunk.chunk_id: p for p in now.search(question, k=10).passages if p.chunk.kind != "faq"}
        for chunk_id in old.keys() & new.keys():
            assert new[chunk_id].dense_score == pytest.approx(old[chunk_id].dense_score, abs=1e-6)
            assert new[chunk_id].lexical_score == pytest.approx(old[chunk_id].lexical_score, abs=1e-6)
            compared += 1
    assert compared >= 40


def test_question_vectors_round_trip_and_are_reused(faq_index: Path, embedder: SentenceEmbedder, tmp_path: Path) -> None:
    version = current_version_dir(faq_index)
    assert version is not None
    manifest = read_manifest(version)
    verify_checksums(version, manifest)
    assert {QUESTIONS_FILE, QUESTION_ROWS_FILE} <= set(manifest.checksums)
    assert manifest.format_version == FORMAT_VERSION == 2
    chunks = read_chunks(version)
    rows = np.load(version / QUESTION_ROWS_FILE)
    vectors = np.load(version / QUESTIONS_FILE)
    assert manifest.question_vector_count == len(rows) == len(vectors) == 4, "one per FAQ entry, none for the article"
    assert sorted(chunks[r].kind for r in rows) == ["faq"] * 4
    expected = embedder.embed([chunks[r].title for r in rows])
    assert np.allclose(vectors, expected, atol=1e-5), "each extra vector is the question alone"
    snapshot = Retriever(faq_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT).snapshot
    assert snapshot.vectors.size == len(chunks) + 4
    assert np.allclose(snapshot.vectors.reconstruct(np.arange(len(chunks), len(chunks) + 4)), vectors, atol=1e-6)

    (tmp_path / "kb" / "faq.csv").write_text(
        "question,answer\n" + "".join(f'"{q}","{a}"\n' for q, a in [*FAQ[:3], ("Is the lid dishwasher safe?", "No.")])
    )
    report = KnowledgeBaseBuilder(faq_index, embedder).ingest([tmp_path / "kb"])
    assert report.added == ["faq#is-the-lid-dishwasher-safe"] and report.removed == [
        "faq#why-does-the-kettle-click-after-it-boils"
    ]
    updated = current_version_dir(faq_index)
    assert updated is not None
    new_chunks = read_chunks(updated)
    new_rows = np.load(updated / QUESTION_ROWS_FILE)
    by_title = {new_chunks[r].title: v for r, v in zip(new_rows, np.load(updated / QUESTIONS_FILE), strict=True)}
    old_by_title = {chunks[r].title: v for r, v in zip(rows, vectors, strict=True)}
    assert set(by_title) == {q for q, _ in FAQ[:3]} | {"Is the lid dishwasher safe?"}
    for title in set(by_title) & set(old_by_title):
        assert np.array_equal(by_title[title], old_by_title[title]), "kept entries keep their stored question vector"
    assert (
        ranked(
            Retriever(faq_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT), "can the lid go in the dishwasher"
        )[0]
        == "faq#is-the-lid-dishwasher-safe"
    )


def downgrade_to_format_1(version: Path) -> None:
    """What a version written before question vectors looks like on disk."""
    manifest = json.loads((version / "manifest.json").read_text())
    chunk_count = manifest["chunk_count"]
    manifest["format_version"] = 1
    del manifest["question_vector_count"]
    for name in (QUESTIONS_FILE, QUESTION_ROWS_FILE):
        del manifest["checksums"][name]
        (version / name).unlink()
    # The FAISS index of format 1 holds the chunk rows only.
    VectorIndex.build(np.load(version / "embeddings.npy")[:chunk_count]).save(version / "index.faiss")
    manifest["checksums"]["index.faiss"] = sha256_file(version / "index.faiss")
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_a_format_1_index_still_loads_and_the_next_ingest_adds_question_vectors(
    faq_index: Path, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    version = current_version_dir(faq_index)
    assert version is not None
    downgrade_to_format_1(version)
    old = Retriever(faq_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT)
    assert old.snapshot.manifest.format_version == 1 and len(old.snapshot.question_rows) == 0
    assert ranked(old, ASKED)[0] != RIGHT, "without question vectors it scores as before"

    report = KnowledgeBaseBuilder(faq_index, embedder).ingest([tmp_path / "kb"])
    assert not report.changed and report.chunks_embedded == 0, "no chunk is re-embedded"
    assert report.version == "000002", "but a format 2 version is written"
    upgraded = read_manifest(faq_index / "versions" / "000002")
    assert upgraded.format_version == 2 and upgraded.question_vector_count == 4
    assert old.reload() and ranked(old, ASKED)[0] == RIGHT


def test_an_index_from_a_newer_format_is_refused_with_a_way_out(faq_index: Path, embedder: SentenceEmbedder) -> None:
    version = current_version_dir(faq_index)
    assert version is not None
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="newer than this version of supportbot reads.*re-ingest"):
        Retriever(faq_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT).search("refund")
    report = KnowledgeBaseBuilder(faq_index, embedder).ingest([faq_index.parent / "kb"])
    assert len(report.added) == 5 and report.chunks_embedded == 5, "re-ingesting rebuilds it in this format"
    assert (
        Retriever(faq_index, embedder, faq_question_weight=FITTED_FAQ_QUESTION_WEIGHT).search(ASKED).passages[0].document_id
        == RIGHT
    )
