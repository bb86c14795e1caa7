"""Writes index versions beside the live one and switches CURRENT atomically."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from retrieval.index_files import (
    CHUNKS_FILE,
    CURRENT_FILE,
    EMBEDDINGS_FILE,
    FAISS_FILE,
    MANIFEST_FILE,
    QUESTION_ROWS_FILE,
    QUESTIONS_FILE,
    VERSIONS_DIR,
    DocumentEntry,
    IndexManifest,
    current_version_dir,
    sha256_file,
)
from retrieval.types import ChunkRecord
from retrieval.vector_index import VectorIndex, VectorIndexParams

_DATA_FILES = (CHUNKS_FILE, EMBEDDINGS_FILE, QUESTIONS_FILE, QUESTION_ROWS_FILE, FAISS_FILE)


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """One writer at a time per index root (readers never need it)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _next_version(root: Path) -> str:
    versions = root / VERSIONS_DIR
    numbers = [int(p.name) for p in versions.iterdir() if p.name.isdigit()] if versions.is_dir() else []
    return f"{max(numbers, default=0) + 1:06d}"


def write_version(
    root: Path,
    *,
    chunks: list[ChunkRecord],
    embeddings: np.ndarray,
    documents: dict[str, DocumentEntry],
    embedding_model: str,
    chunking: dict[str, int],
    params: VectorIndexParams,
    keep_versions: int = 3,
    question_rows: np.ndarray | None = None,
    question_embeddings: np.ndarray | None = None,
) -> IndexManifest:
    """Write a complete version into a temporary folder, rename it, then point CURRENT at it.

    `question_embeddings[i]` is the question alone of the FAQ chunk at row
    `question_rows[i]`; they become extra FAISS rows after the chunk rows (format 2, see
    `retrieval.index_files`). Call under `writer_lock(root)`. A crash at any point leaves
    CURRENT naming the old, complete version; stray temporary folders are removed by the
    next write.
    """
    if len(chunks) != len(embeddings):
        raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
    dimension = int(embeddings.shape[-1]) if embeddings.ndim == 2 else 0
    q_rows = np.zeros(0, np.int64) if question_rows is None else np.asarray(question_rows, dtype=np.int64).reshape(-1)
    q_vectors = (
        np.zeros((0, dimension), np.float32)
        if question_embeddings is None
        else np.ascontiguousarray(question_embeddings, dtype=np.float32).reshape(len(q_rows), dimension)
    )
    if len(q_rows) != len(q_vectors):
        raise ValueError(f"{len(q_rows)} question rows but {len(q_vectors)} question embeddings")
    if len(q_rows) and (q_rows.min() < 0 or q_rows.max() >= len(chunks) or len(set(q_rows.tolist())) != len(q_rows)):
        raise ValueError("question rows must be distinct chunk rows")
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    for stale in versions.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    version = _next_version(root)
    staging = versions / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()

    with (staging / CHUNKS_FILE).open("w", encoding="utf-8") as handle:
        for chunk in chunks:
            handle.write(json.dumps(chunk.to_json(), ensure_ascii=False) + "\n")
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(len(chunks), -1)
    np.save(staging / EMBEDDINGS_FILE, vectors)
    np.save(staging / QUESTIONS_FILE, q_vectors)
    np.save(staging / QUESTION_ROWS_FILE, q_rows)
    index = VectorIndex.build(np.concatenate([vectors, q_vectors]) if len(q_rows) else vectors, params)
    index.save(staging / FAISS_FILE)
    manifest = IndexManifest(
        version=version,
        created_at=datetime.now(UTC),
        embedding_model=embedding_model,
        dimension=int(vectors.shape[1]),
        index_kind=index.kind,
        document_count=len(documents),
        chunk_count=len(chunks),
        question_vector_count=len(q_rows),
        chunking=chunking,
        checksums={name: sha256_file(staging / name) for name in _DATA_FILES},
        documents=documents,
    )
    (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    for name in (*_DATA_FILES, MANIFEST_FILE):
        with (staging / name).open("rb") as handle:
            os.fsync(handle.fileno())
    staging.rename(versions / version)
    _fsync_dir(versions)

    pointer_tmp = root / f".{CURRENT_FILE}.{uuid.uuid4().hex}"
    pointer_tmp.write_text(version + "\n", encoding="utf-8")
    with pointer_tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(pointer_tmp, root / CURRENT_FILE)
    _fsync_dir(root)
    _prune(root, keep_versions)
    return manifest


def _prune(root: Path, keep: int) -> None:
    live = current_version_dir(root)
    numbered = sorted((p for p in (root / VERSIONS_DIR).iterdir() if p.name.isdigit()), key=lambda p: p.name)
    for old in numbered[: max(len(numbered) - keep, 0)]:
        if old != live:
            shutil.rmtree(old, ignore_errors=True)
