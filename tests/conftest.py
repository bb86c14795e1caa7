"""Shared fixtures: one real embedder and one real sample-help-center index per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled models must load without a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "knowledge_base" / "samples" / "help-center"
EVAL_QUESTIONS = REPO / "knowledge_base" / "samples" / "eval" / "questions.jsonl"


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    model = SentenceEmbedder()
    model.warm_up()
    return model


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceEmbedder) -> Path:
    """The sample help center, indexed once; tests must not write to it (copy it first)."""
    root = tmp_path_factory.mktemp("sample-index")
    report = KnowledgeBaseBuilder(root, embedder).ingest([SAMPLES])
    assert not report.errors, report.errors
    return root


@pytest.fixture(scope="session")
def sample_retriever(sample_index: Path, embedder: SentenceEmbedder) -> Retriever:
    return Retriever(sample_index, embedder)


@pytest.fixture()
def writable_sample_index(sample_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(sample_index, target)
    return target
