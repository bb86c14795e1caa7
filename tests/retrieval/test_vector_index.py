from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.vector_index import VectorIndex, VectorIndexParams, pack_mask


def clustered(rows: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 topics in a 16-dim latent space, like text embeddings."""
    fixed = np.random.default_rng(42)
    centres, projection = fixed.normal(size=(50, 16)), fixed.normal(size=(16, dim))
    rng = np.random.default_rng(seed)
    data = (centres[rng.integers(0, 50, rows)] + 0.7 * rng.normal(size=(rows, 16))) @ projection
    data += 0.1 * rng.normal(size=(rows, dim))
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(approx: VectorIndex, exact: VectorIndex, queries: np.ndarray) -> float:
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_reach_recall(kind: str) -> None:
    vectors, queries = clustered(6000), clustered(100, seed=1)
    exact = VectorIndex.build(vectors, VectorIndexParams(kind="flat"))
    approx = VectorIndex.build(vectors, VectorIndexParams(kind=kind))  # type: ignore[arg-type]
    assert approx.kind == kind
    assert recall_at_10(approx, exact, queries) >= 0.95


def test_auto_picks_exact_for_small_bases() -> None:
    assert VectorIndex.build(clustered(100), VectorIndexParams()).kind == "flat"
    assert VectorIndexParams().resolve_kind(1_000_000) == "hnsw"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_allow_mask_is_respected_and_save_load_round_trips(kind: str, tmp_path: Path) -> None:
    vectors = clustered(3000)
    index = VectorIndex.build(vectors, VectorIndexParams(kind=kind))  # type: ignore[arg-type]
    index.save(tmp_path / "index.faiss")
    loaded = VectorIndex.load(tmp_path / "index.faiss")
    assert (loaded.kind, loaded.size, loaded.dimension) == (kind, 3000, 64)
    mask = np.zeros(3000, dtype=bool)
    mask[::7] = True
    scores, rows = loaded.search(vectors[0], 10, allowed=pack_mask(mask))
    assert all(mask[r] for r in rows[0] if r >= 0)
    assert rows[0][0] == 0 and scores[0][0] == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(loaded.reconstruct(np.array([5, 6])), vectors[[5, 6]], atol=1e-6)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        VectorIndexParams(kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hnsw_m must be positive"):
        VectorIndexParams(hnsw_m=0)
    with pytest.raises(ValueError, match="k must be positive"):
        VectorIndex.build(clustered(10)).search(clustered(1), 0)
