"""The on-disk index format, shared by the writer (`knowledge_base`) and the reader.

    ROOT/
      CURRENT                  name of the live version, replaced atomically
      versions/000007/
        manifest.json          IndexManifest: model, dimension, counts, checksums
        chunks.jsonl           one ChunkRecord per line, line i is vector row i
        embeddings.npy         float32 [rows, dim], normalized; lets updates skip re-embedding
        questions.npy          float32 [q, dim]: the question alone of each FAQ chunk (format 2)
        question_rows.npy      int64 [q]: the chunk row each question vector belongs to (format 2)
        index.faiss            the FAISS index over rows + q vectors: chunk rows first, then
                               the question vectors in questions.npy order

FAQ entries are matched on their question as well as on the whole entry: a question
vector is an extra FAISS row that maps back to its chunk (see `question_rows`). Format 1
versions (no question vectors) still load and are searched on their chunk vectors
alone; the next ingest adds the question vectors without re-embedding the chunks.

A version directory is complete before CURRENT names it, so a reader that resolves
CURRENT never sees a half-written index.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from retrieval.types import ChunkRecord

FORMAT_VERSION = 2
CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
MANIFEST_FILE = "manifest.json"
CHUNKS_FILE = "chunks.jsonl"
EMBEDDINGS_FILE = "embeddings.npy"
FAISS_FILE = "index.faiss"
QUESTIONS_FILE = "questions.npy"
QUESTION_ROWS_FILE = "question_rows.npy"
CALIBRATION_FILE = "calibration.json"


class IndexFormatError(Exception):
    """The index on disk is missing, incomplete or does not match this configuration."""


class IndexFormatTooNewError(IndexFormatError):
    """The version was written by a newer supportbot, in a format this one cannot read."""


class DocumentEntry(BaseModel):
    """What the manifest remembers of one document, to update it incrementally."""

    content_hash: str
    source: str
    title: str
    url: str | None = None
    visibility: str = "public"
    kind: str = "article"
    chunk_count: int


class IndexManifest(BaseModel):
    format_version: int = FORMAT_VERSION
    version: str
    created_at: datetime
    embedding_model: str
    dimension: int
    index_kind: str
    document_count: int
    chunk_count: int
    # Extra FAISS rows holding FAQ questions alone (0 in format 1 and in article-only bases).
    question_vector_count: int = 0
    chunking: dict[str, int] = Field(default_factory=dict)
    checksums: dict[str, str] = Field(default_factory=dict)
    documents: dict[str, DocumentEntry] = Field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_version_dir(root: Path) -> Path | None:
    """The live version directory, or None when no index was ever written."""
    pointer = root / CURRENT_FILE
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    version_dir = root / VERSIONS_DIR / name
    if not name or not (version_dir / MANIFEST_FILE).is_file():
        raise IndexFormatError(f"{pointer} names version {name!r}, but {version_dir} has no manifest")
    return version_dir


def read_manifest(version_dir: Path) -> IndexManifest:
    try:
        manifest = IndexManifest.model_validate_json((version_dir / MANIFEST_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"cannot read manifest in {version_dir}: {exc}") from exc
    if manifest.format_version > FORMAT_VERSION:
        raise IndexFormatTooNewError(
            f"{version_dir} is index format {manifest.format_version}, newer than this version of supportbot "
            f"reads ({FORMAT_VERSION}); upgrade supportbot, or re-ingest with this one to rebuild the index"
        )
    return manifest


def read_question_rows(version_dir: Path, manifest: IndexManifest, chunk_count: int) -> np.ndarray:
    """The chunk row of each question vector (int64 [q]); empty for format 1 versions."""
    if manifest.question_vector_count == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        rows = np.load(version_dir / QUESTION_ROWS_FILE)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"cannot read {version_dir / QUESTION_ROWS_FILE}: {exc}") from exc
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) != manifest.question_vector_count or (len(rows) and (rows.min() < 0 or rows.max() >= chunk_count)):
        raise IndexFormatError(
            f"{version_dir / QUESTION_ROWS_FILE}: {len(rows)} rows for {manifest.question_vector_count} question vectors "
            f"over {chunk_count} chunks"
        )
    return rows


def read_chunks(version_dir: Path) -> list[ChunkRecord]:
    chunks: list[ChunkRecord] = []
    with (version_dir / CHUNKS_FILE).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            record = ChunkRecord.from_json(json.loads(line))
            if record.row != line_no - 1:
                raise IndexFormatError(f"{version_dir / CHUNKS_FILE}: line {line_no} holds row {record.row}")
            chunks.append(record)
    return chunks


def verify_checksums(version_dir: Path, manifest: IndexManifest) -> None:
    for name, expected in manifest.checksums.items():
        actual = sha256_file(version_dir / name)
        if actual != expected:
            raise IndexFormatError(f"{version_dir / name} is corrupt: checksum {actual[:12]} != {expected[:12]}")
