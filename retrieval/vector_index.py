"""FAISS over normalized vectors: exact inner product, or HNSW / IVF for large bases."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]

# Below this many vectors exact search is fast enough (about 1 ms at 50k x 384 on 2 cores)
# and approximate indexes only lose recall.
AUTO_APPROXIMATE_FROM = 50_000


@dataclass(frozen=True, slots=True)
class VectorIndexParams:
    """Build and search knobs; defaults reach recall@10 >= 0.95 in bench/search.py."""

    kind: IndexKind = "auto"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 96
    ivf_nlist: int = 0  # 0: about 4 * sqrt(rows)
    ivf_nprobe: int = 16

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "hnsw", "ivf"):
            raise ValueError(f"unknown index kind {self.kind!r}: use auto, flat, hnsw or ivf")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def resolve_kind(self, rows: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "hnsw" if rows >= AUTO_APPROXIMATE_FROM else "flat"


class VectorIndex:
    """Dense search over row ids 0..n-1, optionally restricted by an allow-mask."""

    def __init__(self, index: Any, kind: str, params: VectorIndexParams) -> None:
        self._index = index
        self.kind = kind
        self._params = params

    @classmethod
    def build(cls, vectors: np.ndarray, params: VectorIndexParams | None = None) -> VectorIndex:
        params = params or VectorIndexParams()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows, dim = vectors.shape
        kind = params.resolve_kind(rows)
        index: Any  # faiss's bundled stubs miss IVF/HNSW members used below
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params.hnsw_ef_construction
        else:
            nlist = params.ivf_nlist or max(1, int(4 * math.sqrt(max(rows, 1))))
            nlist = min(nlist, max(1, rows // 39))  # FAISS wants >= 39 training points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # 64 points per list train k-means well; more only slows the build (1M rows: minutes).
            sample = nlist * 64
            train = vectors if rows <= sample else vectors[np.random.default_rng(0).choice(rows, sample, replace=False)]
            index.train(train)
        if rows:
            index.add(vectors)
        if kind == "ivf":
            index.make_direct_map()
        return cls(index, kind, params)

    @classmethod
    def load(cls, path: Path, params: VectorIndexParams | None = None) -> VectorIndex:
        index = faiss.read_index(str(path))
        if isinstance(index, faiss.IndexHNSWFlat):
            kind = "hnsw"
        elif isinstance(index, faiss.IndexIVFFlat):
            kind = "ivf"
            index.make_direct_map()
        else:
            kind = "flat"
        return cls(index, kind, params or VectorIndexParams())

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) for one or more queries; rows of -1 mean "fewer than k".

        `allowed` is a packed little-endian bitmap over rows (see `pack_mask`); FAISS skips
        rows outside it while searching, so filters never starve the result.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        queries = np.ascontiguousarray(query.reshape(-1, self.dimension), dtype=np.float32)
        selector = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(allowed)) if allowed is not None else None
        if self.kind == "hnsw":
            search_params: Any = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
                efSearch=max(self._params.hnsw_ef_search, k)
            )
        elif self.kind == "ivf":
            search_params = faiss.SearchParametersIVF(nprobe=self._params.ivf_nprobe)  # type: ignore[call-arg]
        else:
            search_params = faiss.SearchParameters()
        if selector is not None:
            search_params.sel = selector
        scores, rows = self._index.search(queries, min(k, max(self.size, 1)), params=search_params)
        return scores, rows

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._index.reconstruct_batch(np.asarray(rows, dtype=np.int64)), dtype=np.float32)


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """A boolean row mask as the bitmap `VectorIndex.search(allowed=...)` takes."""
    return np.packbits(mask.astype(np.uint8), bitorder="little")
