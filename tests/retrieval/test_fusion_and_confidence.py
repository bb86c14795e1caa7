from __future__ import annotations

import numpy as np
import pytest

from retrieval.confidence import ConfidenceCalibrator
from retrieval.fusion import blend_scores, fuse, reciprocal_rank_fusion
from retrieval.lexical import LexicalIndex, LexicalTokenizer


def test_rrf_rewards_agreement_and_is_deterministic() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 4, 1]])
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 63)
    with pytest.raises(ValueError, match="k must be positive"):
        reciprocal_rank_fusion([[1]], k=0)


def test_blend_adds_normalised_bm25_to_cosine() -> None:
    fused = blend_scores({1: 0.50, 2: 0.55, 3: 0.20}, {1: 8.0, 3: 4.0}, lexical_weight=0.1)
    assert fused == [(1, pytest.approx(0.60)), (2, pytest.approx(0.55)), (3, pytest.approx(0.25))]
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse("max", {}, {})  # type: ignore[arg-type]


def test_tokenizer_keeps_codes_whole_and_in_parts() -> None:
    assert LexicalTokenizer().tokenize("Error E-1042 on the BRW-K2 kettles") == [
        "error",
        "e-1042",
        "e",
        "1042",
        "brw-k2",
        "brw",
        "k2",
        "kettl",
    ]


def test_lexical_index_finds_exact_codes_and_honours_the_mask() -> None:
    index = LexicalIndex(["error E-1042 base contacts", "error E-101 empty kettle", "refund policy"])
    scores, rows = index.search("E-1042", k=3)
    assert rows[0] == 0 and scores[0] > 0
    _, rows = index.search("E-1042", k=3, allowed=np.array([False, True, True]))
    assert 0 not in rows
    assert index.search("zebra", k=3)[1].size == 0


def test_calibration_recovers_a_known_curve() -> None:
    rng = np.random.default_rng(0)
    truth = ConfidenceCalibrator(slope=12.0, midpoint=0.45)
    cosines = rng.uniform(0.0, 0.9, 4000)
    labels = rng.uniform(size=4000) < np.array([truth.confidence(c) for c in cosines])
    fitted = ConfidenceCalibrator.fit(cosines.tolist(), labels.tolist())
    assert fitted.slope == pytest.approx(12.0, rel=0.15)
    assert fitted.midpoint == pytest.approx(0.45, abs=0.02)
    assert truth.confidence(0.45) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both positive and negative"):
        ConfidenceCalibrator.fit([0.1, 0.2], [True, True])
