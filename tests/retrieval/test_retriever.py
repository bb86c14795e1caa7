from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.evaluation import evaluate_retrieval, load_questions
from retrieval.index_files import IndexFormatError, current_version_dir
from retrieval.retriever import Retriever
from retrieval.types import SearchFilters, Visibility
from tests.conftest import EVAL_QUESTIONS


def test_exact_error_codes_match(sample_retriever: Retriever) -> None:
    for code, document in [
        ("E-1042", "troubleshooting/error-codes"),
        ("PAY-409", "billing/failed-payments"),
        ("ACC-429", "accounts/reset-password"),
    ]:
        result = sample_retriever.search(code, k=3)
        assert result.passages[0].document_id == document, code
        assert result.passages[0].lexical_score > 0


def test_result_carries_what_the_bot_needs(sample_retriever: Retriever) -> None:
    result = sample_retriever.search("how long do refunds take to reach my card", k=4)
    top = result.passages[0]
    assert top.document_id == "billing/refunds"
    assert top.title == "Refund policy" and top.url == "https://help.brewlo.example/billing/refunds"
    assert "business days" in top.text
    assert result.confidence == max(p.confidence for p in result.passages) > 0.5
    assert [p.score for p in result.passages] == sorted((p.score for p in result.passages), reverse=True)
    assert result.index_version == "000001" and set(result.timings_ms) == {"embed", "search"}


def test_visitors_never_see_internal_passages(sample_retriever: Retriever) -> None:
    for question in ["chargeback goodwill credit", "escalation policy for safety incidents", "agents only"]:
        result = sample_retriever.search(question, k=20)
        assert all(p.chunk.visibility is Visibility.PUBLIC for p in result.passages)
    agent = sample_retriever.search("chargeback goodwill credit", k=3, filters=SearchFilters.for_agents())
    assert agent.passages[0].document_id == "internal/billing-disputes"


def test_filters_by_tag_and_document(sample_retriever: Retriever) -> None:
    result = sample_retriever.search("how do I pay", k=5, filters=SearchFilters(tags=frozenset({"shipping"})))
    assert result.passages and all("shipping" in p.chunk.tags for p in result.passages)
    only = sample_retriever.search("anything", k=5, filters=SearchFilters(document_ids=frozenset({"usage/descaling"})))
    assert {p.document_id for p in only.passages} == {"usage/descaling"}
    none = sample_retriever.search("anything", k=5, filters=SearchFilters(document_ids=frozenset({"nope"})))
    assert none.passages == [] and none.confidence == 0.0


def test_out_of_scope_questions_get_low_confidence(sample_retriever: Retriever) -> None:
    assert sample_retriever.search("what is the capital of france").confidence < 0.2
    assert sample_retriever.search("my kettle shows error E-205").confidence > 0.8


def test_bad_queries_are_refused(sample_retriever: Retriever) -> None:
    with pytest.raises(ValueError, match="query is empty"):
        sample_retriever.search("   ")
    with pytest.raises(ValueError, match="k must be positive"):
        sample_retriever.search("refund", k=0)


def test_sample_help_center_quality(sample_retriever: Retriever) -> None:
    questions = load_questions(EVAL_QUESTIONS)
    assert sum(q.in_scope for q in questions) >= 60 and sum(not q.in_scope for q in questions) >= 20
    report = evaluate_retrieval(sample_retriever, questions)
    assert report.recall(5) >= 0.95, report.misses
    assert report.recall(1) >= 0.7 and report.mrr >= 0.8
    assert sum(c < 0.5 for c in report.out_of_scope_confidences) / report.out_of_scope >= 0.85


def test_reload_swaps_in_a_new_version(writable_sample_index: Path, embedder: SentenceEmbedder, tmp_path: Path) -> None:
    retriever = Retriever(writable_sample_index, embedder)
    assert retriever.search("tea subscription for dogs").passages[0].document_id != "dogs"
    article = tmp_path / "dogs.md"
    article.write_text("---\ntitle: Tea for dogs\n---\nBrewlo Club has no tea subscription for dogs; dogs drink water.\n")
    KnowledgeBaseBuilder(writable_sample_index, embedder).ingest([article])
    assert retriever.reload() and not retriever.reload()
    assert retriever.search("tea subscription for dogs").passages[0].document_id == "dogs"


def test_missing_and_mismatched_indexes_are_explained(
    tmp_path: Path, writable_sample_index: Path, embedder: SentenceEmbedder
) -> None:
    with pytest.raises(IndexFormatError, match="no index at .* run `supportbot kb ingest PATH` first"):
        Retriever(tmp_path / "empty", embedder).search("refund")
    version = current_version_dir(writable_sample_index)
    assert version is not None
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["embedding_model"] = "other/model"
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="embedded with other/model.*re-ingest"):
        Retriever(writable_sample_index, embedder).search("refund")
    (version / "chunks.jsonl").write_text("corrupted\n")
    with pytest.raises(IndexFormatError, match="chunks.jsonl is corrupt"):
        Retriever(writable_sample_index, embedder).search("refund")
