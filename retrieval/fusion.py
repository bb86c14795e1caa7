"""Combining dense and lexical results into one ranking.

Two methods, chosen in settings (`retrieval_fusion`):
- `blend` (default): cosine + weight * bm25 / max_bm25 over the union of candidates. The
  dense score keeps its meaning (it also drives confidence) and an exact code match adds
  up to `weight`. On the sample help center it beats RRF (bench/retrieval_quality.py).
- `rrf`: reciprocal rank fusion, which ignores raw scores entirely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

FusionMethod = Literal["blend", "rrf"]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Fuse ranked lists of ids into one, best first, as (id, score).

    Each list adds weight / (k + rank) for each id it holds (rank from 1); ties keep the
    order in which ids first appeared, so the result is deterministic.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    weights = weights or [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def blend_scores(dense: Mapping[int, float], lexical: Mapping[int, float], lexical_weight: float) -> list[tuple[int, float]]:
    """(id, cosine + lexical_weight * bm25 / max bm25), best first.

    `dense` must hold a cosine for every id in `lexical` (reconstruct missing ones first).
    """
    if lexical_weight < 0:
        raise ValueError(f"lexical_weight must be >= 0, got {lexical_weight}")
    top = max(lexical.values(), default=0.0) or 1.0
    ids = list(dict.fromkeys([*dense, *lexical]))
    scored = [(i, dense[i] + lexical_weight * lexical.get(i, 0.0) / top) for i in ids]
    return sorted(scored, key=lambda pair: -pair[1])


def fuse(
    method: FusionMethod,
    dense: Mapping[int, float],
    lexical: Mapping[int, float],
    *,
    lexical_weight: float = 0.1,
    rrf_k: int = 60,
) -> list[tuple[int, float]]:
    if method == "blend":
        return blend_scores(dense, lexical, lexical_weight)
    if method == "rrf":
        return reciprocal_rank_fusion([list(dense), list(lexical)], k=rrf_k)
    raise ValueError(f"unknown fusion method {method!r}: use blend or rrf")
