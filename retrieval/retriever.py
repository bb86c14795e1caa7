"""`Retriever.search`: which passages answer a question, and how sure we are."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.confidence import ConfidenceCalibrator
from retrieval.embedder import Embedder
from retrieval.fusion import FusionMethod, fuse
from retrieval.index_files import (
    CALIBRATION_FILE,
    FAISS_FILE,
    IndexFormatError,
    IndexManifest,
    current_version_dir,
    read_chunks,
    read_manifest,
    read_question_rows,
    verify_checksums,
)
from retrieval.lexical import LexicalIndex
from retrieval.types import ChunkRecord, Passage, SearchFilters, SearchResult
from retrieval.vector_index import VectorIndex, VectorIndexParams, pack_mask


@dataclass(frozen=True, slots=True)
class IndexSnapshot:
    """One loaded index version; replaced whole on reload, never mutated."""

    version_dir: Path
    manifest: IndexManifest
    chunks: list[ChunkRecord]
    vectors: VectorIndex
    lexical: LexicalIndex
    # FAISS rows past the chunk rows hold FAQ questions alone: question_rows[i] is the
    # chunk of FAISS row len(chunks) + i; question_vector_of[chunk row] is that FAISS row, or -1.
    question_rows: np.ndarray
    question_vector_of: np.ndarray

    @classmethod
    def load(cls, version_dir: Path, params: VectorIndexParams, verify: bool = True) -> IndexSnapshot:
        manifest = read_manifest(version_dir)
        if verify:
            verify_checksums(version_dir, manifest)
        chunks = read_chunks(version_dir)
        vectors = VectorIndex.load(version_dir / FAISS_FILE, params)
        question_rows = read_question_rows(version_dir, manifest, len(chunks))
        if vectors.size != len(chunks) + len(question_rows) or len(chunks) != manifest.chunk_count:
            raise IndexFormatError(
                f"{version_dir}: {vectors.size} vectors, {len(chunks)} chunks and {len(question_rows)} question "
                f"vectors, manifest says {manifest.chunk_count} chunks"
            )
        question_vector_of = np.full(len(chunks), -1, dtype=np.int64)
        question_vector_of[question_rows] = len(chunks) + np.arange(len(question_rows))
        lexical = LexicalIndex([f"{c.title}\n{c.heading}\n{c.text}" for c in chunks])
        return cls(version_dir, manifest, chunks, vectors, lexical, question_rows, question_vector_of)

    @property
    def version(self) -> str:
        return self.manifest.version


# Tuned on 1,000 Banking77 train questions asked against the other train rows as FAQ
# entries (three random splits; 0.7 was best or tied on each, ahead of max(question,
# entry)); the test questions were not used. See docs/benchmarks.md. Off (0) unless asked
# for (SUPPORTBOT_RETRIEVAL_FAQ_QUESTION_WEIGHT): on the sample help center, where FAQ
# entries compete with articles, it cost recall@1 0.786 -> 0.757, as short questions'
# cosines run higher than whole articles'.
FITTED_FAQ_QUESTION_WEIGHT = 0.7


class Retriever:
    """Hybrid search (dense FAISS + BM25, fused as `fusion` says) over the live index.

    An FAQ entry's dense score mixes two cosines: `faq_question_weight` times the cosine
    with its question alone plus the rest times the cosine with the whole entry (question
    and answer); 0 gives the scoring of index format 1, where only the whole entry
    counted. Articles have one vector each and are scored as before. Reads `index_root/CURRENT`; `reload()` swaps in a newer version without blocking
    searches in flight (each search holds on to the snapshot it started with).
    """

    def __init__(
        self,
        index_root: Path,
        embedder: Embedder,
        *,
        params: VectorIndexParams | None = None,
        calibrator: ConfidenceCalibrator | None = None,
        candidates: int = 30,
        fusion: FusionMethod = "blend",
        lexical_weight: float = 0.1,
        rrf_k: int = 60,
        verify_checksums: bool = True,
        faq_question_weight: float = 0.0,
    ) -> None:
        if candidates <= 0:
            raise ValueError(f"candidates must be positive, got {candidates}")
        if not 0.0 <= faq_question_weight <= 1.0:
            raise ValueError(f"faq_question_weight must be in [0, 1], got {faq_question_weight}")
        self._root = index_root
        self._embedder = embedder
        self._params = params or VectorIndexParams()
        self._explicit_calibrator = calibrator
        self._candidates = candidates
        self._fusion = fusion
        self._lexical_weight = lexical_weight
        self._rrf_k = rrf_k
        self._verify = verify_checksums
        self._question_weight = faq_question_weight
        self._snapshot: IndexSnapshot | None = None
        self._calibrator = calibrator or ConfidenceCalibrator()
        self._mask_cache: dict[tuple[str, SearchFilters], tuple[np.ndarray, np.ndarray]] = {}
        self._reload_lock = threading.Lock()

    @property
    def snapshot(self) -> IndexSnapshot:
        if self._snapshot is None:
            self.reload()
        if self._snapshot is None:
            raise IndexFormatError(f"no index at {self._root}: run `supportbot kb ingest PATH` first")
        return self._snapshot

    @property
    def calibrator(self) -> ConfidenceCalibrator:
        return self._calibrator

    def reload(self) -> bool:
        """Load the version CURRENT names if it differs from the loaded one; True if swapped."""
        with self._reload_lock:
            version_dir = current_version_dir(self._root)
            if version_dir is None:
                return False
            if self._snapshot is not None and self._snapshot.version_dir == version_dir:
                return False
            snapshot = IndexSnapshot.load(version_dir, self._params, verify=self._verify)
            if snapshot.manifest.embedding_model != self._embedder.model_id:
                raise IndexFormatError(
                    f"index {version_dir} was embedded with {snapshot.manifest.embedding_model}, "
                    f"but the configured embedding model is {self._embedder.model_id}; re-ingest to rebuild it"
                )
            calibration = self._root / CALIBRATION_FILE
            if self._explicit_calibrator is None and calibration.is_file():
                self._calibrator = ConfidenceCalibrator.load(calibration)
            self._snapshot = snapshot
            self._mask_cache.clear()
            return True

    def _masks(self, snapshot: IndexSnapshot, filters: SearchFilters) -> tuple[np.ndarray, np.ndarray]:
        """(boolean mask, FAISS bitmap) of the rows `filters` allow, cached per version."""
        key = (snapshot.version, filters)
        cached = self._mask_cache.get(key)
        if cached is None:
            mask = np.fromiter((filters.allows(c) for c in snapshot.chunks), dtype=bool, count=len(snapshot.chunks))
            # A question vector is allowed exactly when its chunk is.
            questions = mask[snapshot.question_rows] & (self._question_weight > 0)
            cached = (mask, pack_mask(np.concatenate([mask, questions])))
            if len(self._mask_cache) > 64:
                self._mask_cache.clear()
            self._mask_cache[key] = cached
        return cached

    def _dense_with_questions(
        self, snapshot: IndexSnapshot, query_vector: np.ndarray, n: int, bitmap: np.ndarray, lexical: dict[int, float]
    ) -> dict[int, float]:
        """Chunk row -> dense score, best first: the chunk's cosine, mixed for FAQ chunks
        with the cosine of their question (see the class docstring).

        FAISS rows map back to chunks (an entry can come up twice, so twice n rows are
        searched); every candidate, lexical ones included, gets both of its cosines.
        """
        _, rows = snapshot.vectors.search(query_vector, 2 * n, allowed=bitmap)
        chunk_count = len(snapshot.chunks)
        candidates: dict[int, None] = {}
        for row in rows[0]:
            if row >= 0:
                candidates[int(row) if row < chunk_count else int(snapshot.question_rows[row - chunk_count])] = None
            if len(candidates) >= n:
                break
        candidates.update(dict.fromkeys(lexical))
        chunk_rows = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
        cosines = snapshot.vectors.reconstruct(chunk_rows) @ query_vector
        question_of = snapshot.question_vector_of[chunk_rows]
        has_question = question_of >= 0
        if has_question.any():
            question_cosines = snapshot.vectors.reconstruct(question_of[has_question]) @ query_vector
            weight = self._question_weight
            cosines[has_question] = weight * question_cosines + (1 - weight) * cosines[has_question]
        order = np.argsort(-cosines, kind="stable")
        return {int(chunk_rows[i]): float(cosines[i]) for i in order}

    def search(self, query: str, k: int = 5, filters: SearchFilters | None = None) -> SearchResult:
        """The k best passages for `query` that `filters` allow (public ones by default)."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        query = query.strip()
        if not query:
            raise ValueError("query is empty")
        filters = filters or SearchFilters()
        snapshot = self.snapshot
        started = time.perf_counter()
        query_vector = self._embedder.embed([query])[0]
        embedded = time.perf_counter()
        bool_mask, bitmap = self._masks(snapshot, filters)
        if not bool_mask.any():
            return SearchResult(query=query, index_version=snapshot.version)
        n = max(self._candidates, k)
        lexical_scores, lexical_rows = snapshot.lexical.search(query, n, allowed=bool_mask)
        lexical = {int(r): float(s) for r, s in zip(lexical_rows, lexical_scores, strict=True)}
        if self._question_weight > 0 and len(snapshot.question_rows):
            dense = self._dense_with_questions(snapshot, query_vector, n, bitmap, lexical)
        else:
            dense_scores, dense_rows = snapshot.vectors.search(query_vector, n, allowed=bitmap)
            dense = {int(r): float(s) for r, s in zip(dense_rows[0], dense_scores[0], strict=True) if r >= 0}
            missing = [row for row in lexical if row not in dense]
            if missing:  # lexical-only hits still get a true cosine, for blending and confidence
                vectors = snapshot.vectors.reconstruct(np.asarray(missing))
                dense.update({row: float(v @ query_vector) for row, v in zip(missing, vectors, strict=True)})
        fused = fuse(self._fusion, dense, lexical, lexical_weight=self._lexical_weight, rrf_k=self._rrf_k)[:k]
        passages = [
            Passage(
                chunk=snapshot.chunks[row],
                score=score,
                dense_score=dense[row],
                lexical_score=lexical.get(row, 0.0),
                confidence=self._calibrator.confidence(dense[row]),
            )
            for row, score in fused
        ]
        finished = time.perf_counter()
        return SearchResult(
            query=query,
            passages=passages,
            confidence=max((p.confidence for p in passages), default=0.0),
            index_version=snapshot.version,
            timings_ms={"embed": (embedded - started) * 1e3, "search": (finished - embedded) * 1e3},
            query_vector=query_vector,
        )
