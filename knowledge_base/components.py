"""Builds the embedder, index builder and retriever from settings, the same way everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from knowledge_base.builder import KnowledgeBaseBuilder
from knowledge_base.chunking import HeadingChunker
from retrieval.embedder import EmbeddingDtype, SentenceEmbedder
from retrieval.fusion import FusionMethod
from retrieval.retriever import Retriever
from retrieval.vector_index import IndexKind, VectorIndexParams


class KnowledgeBaseSettings(Protocol):
    """The settings these factories read (the server's frozen Settings satisfies it)."""

    @property
    def index_root(self) -> Path: ...

    @property
    def embedding_model(self) -> str: ...

    @property
    def embedding_device(self) -> str: ...

    @property
    def embedding_batch_size(self) -> int: ...

    @property
    def embedding_dtype(self) -> EmbeddingDtype: ...

    @property
    def embedding_cache_dir(self) -> Path | None: ...

    @property
    def chunk_max_tokens(self) -> int: ...

    @property
    def chunk_overlap_tokens(self) -> int: ...

    @property
    def index_kind(self) -> IndexKind: ...

    @property
    def hnsw_m(self) -> int: ...

    @property
    def hnsw_ef_construction(self) -> int: ...

    @property
    def hnsw_ef_search(self) -> int: ...

    @property
    def ivf_nlist(self) -> int: ...

    @property
    def ivf_nprobe(self) -> int: ...

    @property
    def keep_index_versions(self) -> int: ...

    @property
    def retrieval_candidates(self) -> int: ...

    @property
    def retrieval_fusion(self) -> FusionMethod: ...

    @property
    def retrieval_lexical_weight(self) -> float: ...

    @property
    def retrieval_faq_question_weight(self) -> float: ...


def vector_params(settings: KnowledgeBaseSettings) -> VectorIndexParams:
    return VectorIndexParams(
        kind=settings.index_kind,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search,
        ivf_nlist=settings.ivf_nlist,
        ivf_nprobe=settings.ivf_nprobe,
    )


def build_embedder(settings: KnowledgeBaseSettings) -> SentenceEmbedder:
    return SentenceEmbedder(
        settings.embedding_model,
        settings.embedding_device,
        settings.embedding_batch_size,
        dtype=settings.embedding_dtype,
        cache_dir=settings.embedding_cache_dir,
    )


def build_builder(settings: KnowledgeBaseSettings, embedder: SentenceEmbedder | None = None) -> KnowledgeBaseBuilder:
    embedder = embedder or build_embedder(settings)
    chunker = HeadingChunker(embedder.count_tokens, settings.chunk_max_tokens, settings.chunk_overlap_tokens)
    return KnowledgeBaseBuilder(settings.index_root, embedder, chunker, vector_params(settings), settings.keep_index_versions)


def build_retriever(settings: KnowledgeBaseSettings, embedder: SentenceEmbedder | None = None) -> Retriever:
    return Retriever(
        settings.index_root,
        embedder or build_embedder(settings),
        params=vector_params(settings),
        candidates=settings.retrieval_candidates,
        fusion=settings.retrieval_fusion,
        lexical_weight=settings.retrieval_lexical_weight,
        faq_question_weight=settings.retrieval_faq_question_weight,
    )
