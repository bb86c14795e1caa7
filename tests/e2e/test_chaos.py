"""A short run of bench/chaos.py: visitors chat, rate and are taken over while a worker and
the embedded Redis are killed; nothing a client was told was stored may be missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.chaos import MUST_BE_ZERO
from tests.conftest import MODELS_DIR, REPO


def test_a_killed_worker_and_a_killed_redis_lose_nothing_acknowledged(sample_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    command = [
        sys.executable,
        "-m", "bench.chaos",
        "--conversations", "8",
        "--duration", "24",
        "--think", "1",
        "--faults", "worker,redis",
        "--index", str(sample_index),
        "--models-dir", str(MODELS_DIR),
        "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(
        command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=400, check=False
    )
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "stored" in report, run.stdout[-3000:] + run.stderr[-3000:]  # the bench stopped before comparing
    stored = report["stored"]
    assert stored["answers_acknowledged"] >= 8 and stored["ratings_acknowledged"] >= 8, stored
    for figure in MUST_BE_ZERO:
        assert stored[figure] == 0, (figure, stored)
    assert [f["fault"] for f in report["faults"]] == ["worker", "redis"]
    assert all(f["to_next_good_answer_s"] is not None for f in report["faults"]), report["faults"]
    # Turns a visitor waited on in vain (`client_failure_count`, which also fails the bench's
    # `ok`) are a liveness figure, reported in docs/benchmarks.md and not asserted here: on a
    # loaded 2-core runner their count depends on the machine, not only on the code.
