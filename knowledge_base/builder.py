"""Ingest and remove documents, re-embedding only what changed."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from knowledge_base.chunking import HeadingChunker, embedding_text, faq_question
from knowledge_base.documents import Document
from knowledge_base.index_writer import write_version, writer_lock
from knowledge_base.loaders import LoadError, discover, load_file
from retrieval.embedder import Embedder
from retrieval.index_files import (
    EMBEDDINGS_FILE,
    FORMAT_VERSION,
    QUESTIONS_FILE,
    DocumentEntry,
    IndexFormatError,
    IndexFormatTooNewError,
    IndexManifest,
    current_version_dir,
    read_chunks,
    read_manifest,
    read_question_rows,
)
from retrieval.types import ChunkRecord
from retrieval.vector_index import VectorIndexParams

ProgressCallback = Callable[[int, int, str], None]
LAST_REPORT_FILE = "last-report.json"  # in the index root: what the latest ingest or removal did


EMPTY_INDEX_KEY = "index"  # the `errors` key of a change refused because it would empty the index


@dataclass(slots=True)
class IngestReport:
    """What an ingest or removal did; `errors` maps a file to why it was not ingested."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    chunks_embedded: int = 0
    version: str | None = None
    previous_version: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def read_last_report(index_root: Path) -> dict[str, Any] | None:
    """What the latest ingest or removal under `index_root` did (CLI or API), or None."""
    try:
        return dict(json.loads((index_root / LAST_REPORT_FILE).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def _save_report(index_root: Path, action: str, report: IngestReport) -> None:
    staging = index_root / f".{LAST_REPORT_FILE}.{uuid.uuid4().hex}"
    staging.write_text(json.dumps({"action": action, "time": time.time(), **report.as_dict()}, indent=2), encoding="utf-8")
    os.replace(staging, index_root / LAST_REPORT_FILE)


@dataclass(slots=True)
class _Current:
    manifest: IndexManifest | None
    chunks: list[ChunkRecord]
    embeddings: np.ndarray
    # Chunk row -> the vector of its FAQ question alone (empty for format 1 indexes).
    questions: dict[int, np.ndarray] = field(default_factory=dict)

    def rows_of(self, document_id: str) -> list[int]:
        return [c.row for c in self.chunks if c.document_id == document_id]


class KnowledgeBaseBuilder:
    """Maintains the index under `index_root` from help-center files."""

    def __init__(
        self,
        index_root: Path,
        embedder: Embedder,
        chunker: HeadingChunker | None = None,
        params: VectorIndexParams | None = None,
        keep_versions: int = 3,
    ) -> None:
        self._root = index_root
        self._embedder = embedder
        self._chunker = chunker or HeadingChunker(embedder.count_tokens, max_tokens=min(200, embedder.max_tokens - 16))
        self._params = params or VectorIndexParams()
        self._keep = keep_versions

    def _hash_salt(self) -> str:
        return f"{self._embedder.model_id}|{sorted(self._chunker.config.items())}"

    def _load_current(self) -> _Current:
        version_dir = current_version_dir(self._root)
        if version_dir is None:
            return _Current(None, [], np.zeros((0, 0), dtype=np.float32))
        try:
            manifest = read_manifest(version_dir)
        except IndexFormatTooNewError:
            # Its vectors may be reusable, but not its layout: rebuild; the old versions stay on disk.
            return _Current(None, [], np.zeros((0, 0), dtype=np.float32))
        chunks = read_chunks(version_dir)
        embeddings = np.load(version_dir / EMBEDDINGS_FILE)
        if len(embeddings) != len(chunks):
            raise IndexFormatError(f"{version_dir}: {len(embeddings)} embeddings for {len(chunks)} chunks")
        if manifest.embedding_model != self._embedder.model_id:
            # A different model makes every stored vector useless: rebuild from scratch.
            return _Current(None, [], np.zeros((0, 0), dtype=np.float32))
        question_rows = read_question_rows(version_dir, manifest, len(chunks))
        question_vectors = np.load(version_dir / QUESTIONS_FILE) if len(question_rows) else np.zeros((0, 0), np.float32)
        if len(question_vectors) != len(question_rows):
            raise IndexFormatError(f"{version_dir}: {len(question_vectors)} question vectors for {len(question_rows)} rows")
        questions = {int(row): vector for row, vector in zip(question_rows, question_vectors, strict=True)}
        return _Current(manifest, chunks, embeddings, questions)

    def ingest(self, paths: list[Path], progress: ProgressCallback | None = None) -> IngestReport:
        """Load every supported file under `paths` and bring the index up to date.

        A file that fails to load keeps whatever the index already had from it. Documents
        that came from under a given folder and are no longer there are removed.
        """
        found = discover(paths)
        report = IngestReport(errors=dict(found.errors))
        loaded: dict[str, Document] = {}
        loaded_sources: set[str] = set()
        failed_sources: set[str] = set()
        for number, source in enumerate(found.files, start=1):
            if progress:
                progress(number, len(found.files), str(source.path))
            try:
                documents = load_file(source)
            except LoadError as exc:
                report.errors[str(source.path)] = str(exc)
                failed_sources.add(str(source.path))
                continue
            clashes = [d.id for d in documents if d.id in loaded]
            if clashes:
                report.errors[str(source.path)] = f"document id {clashes[0]!r} is already used by {loaded[clashes[0]].source}"
                failed_sources.add(str(source.path))
                continue
            loaded.update((d.id, d) for d in documents)
            loaded_sources.add(str(source.path))

        with writer_lock(self._root):
            current = self._load_current()
            report.previous_version = current.manifest.version if current.manifest else None
            known = current.manifest.documents if current.manifest else {}
            gone = {
                doc_id
                for doc_id, entry in known.items()
                if doc_id not in loaded
                and entry.source not in failed_sources
                and (entry.source in loaded_sources or any(Path(entry.source).is_relative_to(r) for r in found.roots))
            }
            keep = {doc_id: entry for doc_id, entry in known.items() if doc_id not in gone}
            report.removed = sorted(gone)
            self._rebuild(current, keep, loaded, report)
            _save_report(self._root, "ingest", report)
            return report

    def remove(self, document_ids: list[str]) -> IngestReport:
        """Remove documents by id; an id that is not in the index is reported as an error."""
        report = IngestReport()
        with writer_lock(self._root):
            current = self._load_current()
            if current.manifest is None:
                report.errors.update({d: "no index yet" for d in document_ids})
                _save_report(self._root, "remove", report)
                return report
            known = current.manifest.documents
            report.previous_version = current.manifest.version
            for doc_id in document_ids:
                matches = [d for d in known if d == doc_id or d.startswith(f"{doc_id}#")]
                if not matches:
                    report.errors[doc_id] = "no such document in the index"
                report.removed.extend(matches)
            report.removed = sorted(set(report.removed))
            keep = {d: e for d, e in known.items() if d not in report.removed}
            self._rebuild(current, keep, {}, report)
            _save_report(self._root, "remove", report)
            return report

    def _rebuild(
        self, current: _Current, keep: dict[str, DocumentEntry], loaded: dict[str, Document], report: IngestReport
    ) -> IngestReport:
        salt = self._hash_salt()
        documents: dict[str, DocumentEntry] = {}
        reused_rows: list[int] = []
        reused: list[ChunkRecord] = []
        to_embed: list[tuple[Document, list[ChunkRecord]]] = []
        for doc_id in sorted(set(keep) | set(loaded)):
            document = loaded.get(doc_id)
            entry = keep.get(doc_id)
            content_hash = document.content_hash(salt) if document else None
            if document is None or (entry is not None and entry.content_hash == content_hash):
                assert entry is not None
                rows = current.rows_of(doc_id)
                reused_rows.extend(rows)
                reused.extend(current.chunks[r] for r in rows)
                documents[doc_id] = entry
                if document is not None:
                    report.unchanged.append(doc_id)
                continue
            (report.updated if entry is not None else report.added).append(doc_id)
            records = [
                ChunkRecord(
                    row=-1,
                    chunk_id=chunk.chunk_id,
                    document_id=doc_id,
                    title=document.title,
                    heading=chunk.heading,
                    text=chunk.text,
                    url=document.url,
                    source=document.source,
                    visibility=document.visibility,
                    tags=document.tags,
                    kind=document.kind,
                )
                for chunk in self._chunker.chunk(document)
            ]
            to_embed.append((document, records))
            assert content_hash is not None
            documents[doc_id] = DocumentEntry(
                content_hash=content_hash,
                source=document.source,
                title=document.title,
                url=document.url,
                visibility=document.visibility.value,
                kind=document.kind,
                chunk_count=len(records),
            )
        if not documents and report.changed:
            # FAISS, BM25 and the confidence calibration need rows: refuse rather than crash half-way.
            report.errors[EMPTY_INDEX_KEY] = (
                f"this would remove every document ({len(report.removed)}) and an index cannot be empty: "
                "ingest the new documents first, then remove the old ones; the index is unchanged"
            )
            report.removed, report.added, report.updated = [], [], []
            report.version = report.previous_version
            return report
        outdated = current.manifest is not None and current.manifest.format_version < FORMAT_VERSION
        if not report.changed and not outdated:
            report.version = report.previous_version
            return report
        new_records = [r for _, records in to_embed for r in records]
        new_vectors = self._embedder.embed([embedding_text(r.title, r.heading, r.text) for r in new_records])
        report.chunks_embedded = len(new_records)
        old_vectors = current.embeddings[reused_rows] if reused_rows else np.zeros((0, self._embedder.dimension), np.float32)
        all_records = [replace(record, row=row) for row, record in enumerate([*reused, *new_records])]
        question_rows, question_vectors = self._question_vectors(current, reused_rows, all_records)
        manifest = write_version(
            self._root,
            chunks=all_records,
            embeddings=np.concatenate([old_vectors.reshape(-1, self._embedder.dimension), new_vectors]),
            documents=documents,
            embedding_model=self._embedder.model_id,
            chunking=self._chunker.config,
            params=self._params,
            keep_versions=self._keep,
            question_rows=question_rows,
            question_embeddings=question_vectors,
        )
        report.version = manifest.version
        return report

    def _question_vectors(
        self, current: _Current, reused_rows: list[int], records: list[ChunkRecord]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(chunk rows, vectors) of the FAQ questions alone; reused chunks keep their stored vector.

        `records[i]` for i < len(reused_rows) is the chunk that was row `reused_rows[i]`.
        A format 1 index has no stored question vectors, so those are embedded here.
        """
        rows: list[int] = []
        vectors: list[np.ndarray | None] = []
        to_embed: list[tuple[int, str]] = []
        for record in records:
            question = faq_question(record.text) if record.kind == "faq" else None
            if question is None:
                continue
            old_row = reused_rows[record.row] if record.row < len(reused_rows) else None
            stored = current.questions.get(old_row) if old_row is not None else None
            if stored is None:
                to_embed.append((len(vectors), question))
            rows.append(record.row)
            vectors.append(stored)
        embedded = self._embedder.embed([question for _, question in to_embed])
        for (slot, _), vector in zip(to_embed, embedded, strict=True):
            vectors[slot] = vector
        dimension = self._embedder.dimension
        stacked = np.stack([v for v in vectors if v is not None]) if vectors else np.zeros((0, dimension), np.float32)
        return np.asarray(rows, dtype=np.int64), stacked.astype(np.float32).reshape(len(rows), dimension)

    def ensure_built(self, paths: list[Path]) -> IngestReport | None:
        """Ingest `paths` only when no index exists yet (first start); None when one does."""
        if current_version_dir(self._root) is not None:
            return None
        return self.ingest(paths)
