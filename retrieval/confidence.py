"""Turns a passage's cosine similarity into a probability that it answers the question.

A logistic curve, confidence = 1 / (1 + exp(-slope * (cosine - midpoint))), fitted on
labelled questions: in-scope questions whose top passage came from the right article are
positives, out-of-scope questions and misses are negatives (`supportbot kb eval
--calibrate` refits and writes calibration.json next to the index).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, slots=True)
class ConfidenceCalibrator:
    # Fitted on the sample help center with all-MiniLM-L6-v2 (see docs/benchmarks.md).
    slope: float = 9.17
    midpoint: float = 0.471

    def __post_init__(self) -> None:
        if self.slope <= 0:
            raise ValueError(f"slope must be positive, got {self.slope}")

    def confidence(self, cosine: float) -> float:
        return 1.0 / (1.0 + math.exp(-self.slope * (cosine - self.midpoint)))

    @classmethod
    def fit(cls, cosines: list[float], labels: list[bool], iterations: int = 500) -> ConfidenceCalibrator:
        """Logistic regression on one feature by Newton's method, lightly regularised."""
        if len(cosines) != len(labels) or not cosines:
            raise ValueError("need one label per cosine, and at least one of each")
        if all(labels) or not any(labels):
            raise ValueError("calibration needs both positive and negative examples")
        x = np.asarray(cosines, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        w = np.zeros(2)  # intercept, slope
        features = np.stack([np.ones_like(x), x], axis=1)
        ridge = 1e-3 * np.eye(2)
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-features @ w))
            gradient = features.T @ (p - y) + ridge @ w
            hessian = features.T @ (features * (p * (1 - p))[:, None]) + ridge
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-9:
                break
        intercept, slope = float(w[0]), float(w[1])
        if slope <= 0:
            raise ValueError("labels do not increase with similarity; calibration would be meaningless")
        return cls(slope=slope, midpoint=-intercept / slope)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ConfidenceCalibrator:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(slope=float(data["slope"]), midpoint=float(data["midpoint"]))
