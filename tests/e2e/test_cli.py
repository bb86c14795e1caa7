"""The `supportbot` command as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.generation.generator import TransformersGenerator
from tests.conftest import MODELS_DIR, SAMPLES

SUPPORTBOT = [sys.executable, "-m", "server.cli"]


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUPPORTBOT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*SUPPORTBOT, *args], capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture()
def data_dir(tmp_path: Path, sample_index: Path) -> Path:
    shutil.copytree(sample_index, tmp_path / "data" / "index")
    return tmp_path / "data"


def test_ingest_a_users_own_folder_with_a_bad_file(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "returns.md").write_text("# Returns\n\nSend it back within 60 days with the QR code ZX-77.\n")
    (docs / "hours.txt").write_text("Opening hours\nWe answer chats from 8:00 to 20:00 CET.\n")
    (docs / "broken.csv").write_text("q,a\nx,y\n")
    result = run(tmp_path / "data", "kb", "ingest", str(docs))
    assert result.returncode == 2, result.stderr
    assert "broken.csv: CSV is missing column(s) question, answer" in result.stderr
    assert "added 2, updated 0, unchanged 0, removed 0 documents; 2 chunks embedded; index version 000001" in result.stdout

    again = run(tmp_path / "data", "kb", "ingest", str(docs / "returns.md"))
    assert again.returncode == 0 and "index unchanged (version 000001)" in again.stdout

    found = run(tmp_path / "data", "kb", "search", "code ZX-77", "-k", "1")
    assert found.returncode == 0 and "1. Returns" in found.stdout and "ZX-77" in found.stdout

    stats = run(tmp_path / "data", "kb", "stats")
    assert stats.returncode == 0 and "documents        2 (2 article)" in stats.stdout

    removed = run(tmp_path / "data", "kb", "remove", "hours", "ghost")
    assert removed.returncode == 2 and "ghost: no such document in the index" in removed.stderr
    assert "removed 1 documents" in removed.stdout


def test_search_and_eval_on_the_sample_help_center(data_dir: Path) -> None:
    result = run(data_dir, "kb", "search", "my kettle shows E-1042", "-k", "2")
    assert result.returncode == 0, result.stderr
    assert "1. Kettle error codes" in result.stdout and "troubleshooting/error-codes" in result.stdout
    assert "confidence" in result.stdout

    internal = run(data_dir, "kb", "search", "chargeback goodwill credit", "--internal", "-k", "1")
    assert "internal/billing-disputes" in internal.stdout

    evaluation = run(data_dir, "kb", "eval")
    assert evaluation.returncode == 0, evaluation.stderr
    lines = dict(line.split(maxsplit=1) for line in evaluation.stdout.splitlines() if line.startswith(("recall@", "MRR")))
    assert float(lines["recall@5"]) >= 0.95 and float(lines["recall@1"]) >= 0.7


def test_errors_are_clear_and_exit_non_zero(tmp_path: Path) -> None:
    empty = tmp_path / "empty-data"
    result = run(empty, "kb", "search", "refund")
    assert result.returncode == 1 and "run `supportbot kb ingest PATH` first" in result.stderr
    assert run(empty, "kb", "stats").returncode == 1
    nothing = run(empty, "kb", "ingest", str(tmp_path / "missing"))
    assert nothing.returncode == 1 and "no such file or folder" in nothing.stderr
    env_bad = subprocess.run(
        [*SUPPORTBOT, "kb", "stats"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SUPPORTBOT_CHUNK_MAX_TOKENS": "lots"},
    )
    assert env_bad.returncode == 2 and "invalid settings" in env_bad.stderr and "chunk_max_tokens" in env_bad.stderr
    no_url = subprocess.run(
        [*SUPPORTBOT, "kb", "stats"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SUPPORTBOT_GENERATOR_BACKEND": "openai"},
    )
    assert no_url.returncode == 2 and "generator_backend=openai needs SUPPORTBOT_GENERATOR_BASE_URL" in no_url.stderr


def test_sample_help_center_meets_the_content_floor() -> None:
    articles = [p for p in SAMPLES.rglob("*") if p.suffix in {".md", ".html", ".txt", ".pdf"}]
    assert len(articles) >= 40
    assert {p.parent.name for p in articles} >= {"billing", "accounts", "security", "shipping", "usage", "troubleshooting"}
    assert len((SAMPLES / "faq.csv").read_text().splitlines()) - 1 >= 80


def test_bot_eval_compares_answer_modes_in_one_run(data_dir: Path, generator: TransformersGenerator, tmp_path: Path) -> None:
    env_model = str(MODELS_DIR / "gemma-3-270m-dense")  # the fixture made sure it is dequantized
    report = tmp_path / "eval.json"
    OPTIONS = ["--max-new-tokens", "16", "--show", "--output"]
    result = subprocess.run(
        [
            *SUPPORTBOT,
            "bot",
            "eval",
            "--split",
            "tune",
            "--limit",
            "4",
            "--mode",
            "extractive",
            "--compare",
            "generative",
            *OPTIONS,
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "SUPPORTBOT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "SUPPORTBOT_GENERATOR_MODEL": env_model},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 questions (tune split of turns.jsonl)" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "extractive" in line and "generative" in line)
    assert header.split() == ["extractive", "generative"]
    assert "contradiction traps failed" in result.stdout and "key facts present (in scope)" in result.stdout
    saved = json.loads(report.read_text())
    assert [s["mode"] for s in saved["summaries"]] == ["extractive", "generative"]
    assert len(saved["questions"]["extractive"]) == 4 and saved["split"] == "tune"
    refused = subprocess.run(
        [*SUPPORTBOT, "bot", "eval", "--split", "neither"], capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 2 and "--split must be tune, heldout or all" in refused.stderr
