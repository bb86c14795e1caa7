from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from knowledge_base.builder import EMPTY_INDEX_KEY, KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.index_files import CURRENT_FILE, current_version_dir, read_chunks, read_manifest, verify_checksums
from retrieval.retriever import Retriever
from retrieval.vector_index import VectorIndex


def article(title: str, body: str) -> str:
    return f"---\ntitle: {title}\n---\n## Details\n{body}\n"


@pytest.fixture()
def kb(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    (folder / "billing").mkdir(parents=True)
    (folder / "billing" / "refunds.md").write_text(article("Refunds", "Refunds take 5 business days to reach your card."))
    (folder / "billing" / "invoices.md").write_text(article("Invoices", "Invoices are PDFs under Billing > Invoices."))
    (folder / "shipping.md").write_text(article("Shipping", "Standard shipping takes 3 to 5 days."))
    (folder / "faq.csv").write_text("question,answer\nDo you ship to Mars?,Not yet.\nIs it free?,Over $35.\n")
    return folder


@pytest.fixture()
def builder(tmp_path: Path, embedder: SentenceEmbedder) -> KnowledgeBaseBuilder:
    return KnowledgeBaseBuilder(tmp_path / "index", embedder)


def live_documents(root: Path) -> set[str]:
    version = current_version_dir(root)
    assert version is not None
    return set(read_manifest(version).documents)


def test_first_ingest_writes_a_complete_version(kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path) -> None:
    report = builder.ingest([kb])
    assert not report.errors
    assert sorted(report.added) == [
        "billing/invoices",
        "billing/refunds",
        "faq#do-you-ship-to-mars",
        "faq#is-it-free",
        "shipping",
    ]
    version = current_version_dir(tmp_path / "index")
    assert version is not None and version.name == report.version == "000001"
    manifest = read_manifest(version)
    verify_checksums(version, manifest)
    chunks = read_chunks(version)
    assert manifest.chunk_count == len(chunks) == report.chunks_embedded == 5
    assert manifest.embedding_model == "sentence-transformers/all-MiniLM-L6-v2" and manifest.dimension == 384
    vectors = np.load(version / "embeddings.npy")
    assert vectors.shape == (5, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_reingest_only_embeds_what_changed(kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path) -> None:
    builder.ingest([kb])
    unchanged = builder.ingest([kb])
    assert not unchanged.changed and unchanged.chunks_embedded == 0 and unchanged.version == "000001"

    (kb / "billing" / "refunds.md").write_text(article("Refunds", "Refunds now take 3 business days."))
    (kb / "shipping.md").unlink()
    (kb / "new.md").write_text(article("Gift cards", "Gift cards never expire."))
    report = builder.ingest([kb])
    assert (report.updated, report.removed, report.added) == (["billing/refunds"], ["shipping"], ["new"])
    assert report.chunks_embedded == 2, "only the changed and the new document are embedded"
    assert len(report.unchanged) == 3

    retriever = Retriever(tmp_path / "index", builder._embedder)
    top = retriever.search("how long do refunds take", k=1).passages[0]
    assert top.document_id == "billing/refunds" and "3 business days" in top.text
    assert "shipping" not in live_documents(tmp_path / "index")


def test_a_broken_file_keeps_its_old_documents_and_the_rest_goes_in(
    kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path
) -> None:
    builder.ingest([kb])
    (kb / "shipping.md").write_bytes(b"\xff\xfe broken \x00\x01")
    (kb / "faq.csv").write_text("question,reply\nQ,A\n")
    (kb / "new.md").write_text(article("Gift cards", "Gift cards never expire."))
    report = builder.ingest([kb])
    assert set(report.errors) == {str(kb / "shipping.md"), str(kb / "faq.csv")}
    assert "binary content" in report.errors[str(kb / "shipping.md")]
    assert "missing column(s) answer" in report.errors[str(kb / "faq.csv")]
    assert report.added == ["new"] and report.removed == []
    assert {"shipping", "faq#is-it-free", "new"} <= live_documents(tmp_path / "index")


def test_a_batch_of_only_bad_files_leaves_the_index_untouched(kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path) -> None:
    builder.ingest([kb])
    before = (tmp_path / "index" / CURRENT_FILE).read_text()
    bad = tmp_path / "bad.md"
    bad.write_text("")
    report = builder.ingest([bad, tmp_path / "nope.md"])
    assert not report.changed and len(report.errors) == 2
    assert (tmp_path / "index" / CURRENT_FILE).read_text() == before


def test_duplicate_ids_across_files_are_refused(tmp_path: Path, builder: KnowledgeBaseBuilder) -> None:
    (tmp_path / "a.md").write_text("---\nid: same\n---\nOne.\n")
    (tmp_path / "b.md").write_text("---\nid: same\n---\nTwo.\n")
    report = builder.ingest([tmp_path / "a.md", tmp_path / "b.md"])
    assert report.added == ["same"]
    assert "document id 'same' is already used by" in report.errors[str(tmp_path / "b.md")]


def test_remove_by_id(kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path) -> None:
    builder.ingest([kb])
    report = builder.remove(["shipping", "faq", "does-not-exist"])
    assert report.removed == ["faq#do-you-ship-to-mars", "faq#is-it-free", "shipping"]
    assert report.errors == {"does-not-exist": "no such document in the index"}
    assert live_documents(tmp_path / "index") == {"billing/invoices", "billing/refunds"}


def test_removing_every_document_is_refused_and_the_index_is_left_as_it_was(
    kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path
) -> None:
    first = builder.ingest([kb])
    everything = sorted(live_documents(tmp_path / "index"))
    report = builder.remove(["billing/refunds", "billing/invoices", "shipping", "faq"])
    assert not report.changed and report.version == first.version and report.removed == []
    assert "cannot be empty" in report.errors[EMPTY_INDEX_KEY] and "unchanged" in report.errors[EMPTY_INDEX_KEY]
    assert sorted(live_documents(tmp_path / "index")) == everything
    # The same when a folder's files are all gone; one document left is fine.
    for path in [*kb.rglob("*.md"), kb / "faq.csv"]:
        path.unlink()
    emptied = builder.ingest([kb])
    assert EMPTY_INDEX_KEY in emptied.errors and sorted(live_documents(tmp_path / "index")) == everything
    assert builder.remove(["billing/refunds", "billing/invoices", "faq"]).removed == [
        "billing/invoices",
        "billing/refunds",
        "faq#do-you-ship-to-mars",
        "faq#is-it-free",
    ]
    assert live_documents(tmp_path / "index") == {"shipping"}


def test_crash_while_writing_keeps_the_old_version_live(
    kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder.ingest([kb])
    root = tmp_path / "index"
    retriever = Retriever(root, builder._embedder)
    assert retriever.search("refund", k=1).index_version == "000001"

    def disk_full(self: VectorIndex, path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VectorIndex, "save", disk_full)
    (kb / "new.md").write_text(article("Gift cards", "Gift cards never expire."))
    with pytest.raises(OSError, match="No space left"):
        builder.ingest([kb])
    assert (root / CURRENT_FILE).read_text().strip() == "000001"
    assert not retriever.reload()
    assert retriever.search("refund", k=1).index_version == "000001"

    monkeypatch.undo()
    report = builder.ingest([kb])
    assert report.version == "000002" and report.added == ["new"]
    assert not list((root / "versions").glob(".tmp-*")), "the next write cleans up the half-written folder"
    assert retriever.reload() and retriever.search("gift card expiry", k=1).passages[0].document_id == "new"


def test_old_versions_are_pruned(kb: Path, tmp_path: Path, embedder: SentenceEmbedder) -> None:
    builder = KnowledgeBaseBuilder(tmp_path / "index", embedder, keep_versions=2)
    for i in range(4):
        (kb / "counter.md").write_text(article("Counter", f"Version {i} of this article."))
        builder.ingest([kb])
    assert sorted(p.name for p in (tmp_path / "index" / "versions").iterdir()) == ["000003", "000004"]


def test_changing_the_embedding_model_rebuilds_everything(kb: Path, builder: KnowledgeBaseBuilder, tmp_path: Path) -> None:
    builder.ingest([kb])
    version = current_version_dir(tmp_path / "index")
    assert version is not None
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["embedding_model"] = "some/other-model"
    (version / "manifest.json").write_text(json.dumps(manifest))
    report = builder.ingest([kb])
    assert len(report.added) == 5 and report.chunks_embedded == 5
