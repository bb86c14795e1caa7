"""Search latency and recall: exact (flat) vs approximate (HNSW, IVF) at 10k, 100k and 1M chunks.

Vectors are synthetic but shaped like sentence embeddings (384 dims, unit length, clustered
around topics, so near neighbours exist as they do for real text); queries come from the
same distribution and are not in the index. Latency is one query at a time, as the server
searches, on all cores FAISS is given. Recall@10 is measured against exact search.

    .venv/bin/python bench/search.py [--sizes 10000 100000 1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from retrieval.vector_index import VectorIndex, VectorIndexParams

DIM = 384


def embeddings_like(rows: int, seed: int, topics: int = 2000, latent: int = 64) -> np.ndarray:
    """Unit vectors with the structure of text embeddings: a few thousand topics in a
    64-dimensional latent space, projected to 384 dims, plus small isotropic noise.

    Isotropic noise in all 384 dims would make every point of a topic equidistant from a
    query, a worst case real sentence embeddings (intrinsic dimension well below 384) do
    not show; see docs/benchmarks.md.
    """
    fixed = np.random.default_rng(42)
    centres = fixed.normal(size=(topics, latent)).astype(np.float32)
    projection = fixed.normal(size=(latent, DIM)).astype(np.float32) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    out = np.empty((rows, DIM), dtype=np.float32)
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        hidden = centres[rng.integers(0, topics, n)] + 0.7 * rng.normal(size=(n, latent)).astype(np.float32)
        block = hidden @ projection + 0.1 * rng.normal(size=(n, DIM)).astype(np.float32)
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def measure(index: VectorIndex, queries: np.ndarray, truth: np.ndarray | None) -> dict[str, float]:
    for q in queries[:20]:
        index.search(q, 10)
    latencies, found = [], []
    for q in queries:
        started = time.perf_counter()
        _, rows = index.search(q, 10)
        latencies.append((time.perf_counter() - started) * 1e3)
        found.append(rows[0])
    result = {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}
    if truth is not None:
        result["recall_at_10"] = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[VectorIndexParams().hnsw_ef_search])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[VectorIndexParams().ivf_nprobe])
    parser.add_argument("--out", type=Path, default=Path("bench/results/search.json"))
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}"
    )
    queries = embeddings_like(args.queries, seed=7)
    results = []
    for size in args.sizes:
        vectors = embeddings_like(size, seed=1)
        exact = VectorIndex.build(vectors, VectorIndexParams(kind="flat"))
        _, truth = exact.search(queries, 10)
        for kind in args.kinds:
            settings = (
                [{}]
                if kind == "flat"
                else [{"hnsw_ef_search": e} for e in args.ef_search]
                if kind == "hnsw"
                else [{"ivf_nprobe": p} for p in args.nprobe]
            )
            started = time.perf_counter()
            index = exact if kind == "flat" else VectorIndex.build(vectors, VectorIndexParams(kind=kind))  # type: ignore[arg-type]
            build_s = time.perf_counter() - started
            # Serialized size is the index's own memory (vectors + graph or lists); RSS deltas
            # are unreliable once the allocator reuses freed pages.
            memory = faiss.serialize_index(index._index).nbytes / 1e6
            for extra in settings:
                if extra:
                    index._params = VectorIndexParams(kind=kind, **extra)  # type: ignore[arg-type]
                row = {
                    "size": size,
                    "kind": kind,
                    **extra,
                    "build_s": round(build_s, 1),
                    "index_mb": round(memory),
                    **measure(index, queries, None if kind == "flat" else truth),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
            if index is not exact:
                del index
        flat_p99 = next(r["p99_ms"] for r in results if r["size"] == size and r["kind"] == "flat")
        for r in results:
            if r["size"] == size:
                r["speedup_p99_vs_flat"] = round(flat_p99 / r["p99_ms"], 1)
        del exact, vectors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cores": os.cpu_count(), "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3},
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
