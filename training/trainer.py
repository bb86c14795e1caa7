"""One training run: TRL's SFTTrainer (then DPOTrainer) with PEFT LoRA adapters, merged for serving
or kept as adapters (`adapter=True`).

Heavy libraries (torch, transformers, trl, peft, datasets, accelerate) are imported inside
`train` only. The examples are prompt/completion pairs, so the loss is on the answer alone
(TRL's completion-only loss). On a CPU it runs in float32 with `use_cpu`; on a GPU in bfloat16.
Under `accelerate launch` the Trainer spreads the batches over the processes; only the main
process merges and writes the model.

Kept as adapters, the model directory holds one adapter per stage, in the order they apply
(`sft/`, `dpo/`): the DPO adapter was trained on the base with the SFT adapter merged, so
loading merges them in that order (bot/generation/model_store.load_causal_lm). One LoRA
cannot hold both: the SFT delta merged in and a second low-rank delta on top is, in general,
not of rank r any more. Stacking them keeps both stages exact at twice the (small) size.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bot.generation.model_store import ADAPTER_FORMAT, CANDIDATE_FILE

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    max_steps: int = 0  # 0: run `epochs` epochs
    epochs: float = 3.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation: int = 1
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    max_length: int = 1024
    warmup_ratio: float = 0.05
    seed: int = 42
    save_steps: int = 50
    # The DPO stage (preference pairs); batch size, LoRA shape, max length, seed and save steps are shared.
    dpo_beta: float = 0.1  # how far from the reference (the SFT model) the pairs may pull; higher: less far
    dpo_max_steps: int = 0  # 0: run `dpo_epochs` epochs
    dpo_epochs: float = 1.0
    dpo_learning_rate: float = 5e-5

    def __post_init__(self) -> None:
        if self.max_steps < 0 or self.epochs <= 0 or self.learning_rate <= 0 or self.batch_size <= 0:
            raise ValueError("max steps must be >= 0; epochs, learning rate and batch size must be positive")
        if self.lora_rank <= 0 or self.max_length < 64 or self.save_steps <= 0 or self.gradient_accumulation <= 0:
            raise ValueError("LoRA rank and save steps must be positive and max length at least 64")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warm-up ratio must be at least 0 and below 1")
        if self.dpo_beta <= 0 or self.dpo_max_steps < 0 or self.dpo_epochs <= 0 or self.dpo_learning_rate <= 0:
            raise ValueError("DPO beta, epochs and learning rate must be positive and DPO max steps >= 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class StageResult:
    """What one stage (SFT or DPO) did: its log and its throughput."""

    loss_history: list[dict[str, float]]
    train_loss: float | None
    steps: int
    wall_s: float
    tokens: int
    tokens_per_s: float


@dataclass(slots=True)
class TrainResult:
    sft: StageResult | None
    dpo: StageResult | None
    device: str
    processes: int
    main_process: bool


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def distributed_state() -> Any:
    """accelerate's view of this process (one process, or one of `accelerate launch`'s)."""
    from accelerate import PartialState

    return PartialState()


def agree_on(value: str) -> str:
    """The main process's `value` in every process (one candidate id for one `accelerate launch`)."""
    from accelerate.utils import broadcast_object_list

    state = distributed_state()
    if state.num_processes == 1:
        return value
    holder = [value]
    broadcast_object_list(holder, from_process=0)
    return str(holder[0])


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@contextlib.contextmanager
def _quiet_hub_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


DPO_CHECKPOINTS = "dpo"  # the DPO stage's checkpoints, inside the run's checkpoint directory


def train(
    model_path: str,
    train_file: Path | None,
    checkpoints: Path,
    output: Path,
    hyper: Hyperparameters,
    *,
    candidate: dict[str, Any],
    pairs_file: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    adapter: bool = False,
    base_sha256: str | None = None,
) -> TrainResult:
    """Fine-tune `model_path`: SFT on `train_file` (prompt/completion JSONL), then DPO on `pairs_file`
    (prompt/chosen/rejected JSONL); merge, save to `output`. Either file may be None, not both.

    `candidate` ({"candidate_id", "base_model"}) is written into the model directory so the
    generator's model store names its answers after the candidate. With `adapter`, `output` gets
    each stage's LoRA adapter instead of a merged checkpoint, and candidate.json the base's
    `base_sha256` (bot/generation/model_store.weights_sha256) that loading checks. With `resume`,
    each stage continues from its last checkpoint; a DPO stage that had not saved one yet starts over.
    """
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    if train_file is None and pairs_file is None:
        raise ValueError("nothing to train on: no SFT examples and no preference pairs")
    if adapter and not base_sha256:
        raise ValueError("an adapter-only candidate needs the sha256 of its base model's weights")
    set_seed(hyper.seed)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    with _quiet_hub_progress():
        tokenizer = load_tokenizer(model_path)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation="eager"
        )
    common = {
        "per_device_train_batch_size": hyper.batch_size,
        "gradient_accumulation_steps": hyper.gradient_accumulation,
        "warmup_steps": hyper.warmup_ratio,
        "lr_scheduler_type": "cosine",
        "max_length": hyper.max_length,
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "use_cpu": not on_gpu,
        "bf16": bf16,
        "fp16": False,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": hyper.save_steps,
        "save_total_limit": 2,
        "report_to": "none",
        "disable_tqdm": not progress,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
    }
    sft = dpo = None
    trainer: Any = None
    staging = output.with_name(f".{output.name}.staging")
    if distributed_state().is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    adapters: list[str] = []

    def finish_stage(name: str) -> Any:
        """The stage's model with its adapter merged (saved first when keeping adapters)."""
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        if adapter:
            if trainer.is_world_process_zero():
                peft_model.save_pretrained(staging / name, safe_serialization=True)
            adapters.append(name)
        return peft_model.merge_and_unload()

    if train_file is not None:
        trainer, sft = _sft_stage(model, tokenizer, train_file, checkpoints, hyper, common, resume=resume)
        # Every process merges: the DPO stage trains (and its reference is) the model SFT left.
        model = finish_stage("sft")
    if pairs_file is not None:
        dpo_checkpoints = checkpoints / DPO_CHECKPOINTS
        # Resuming a run whose SFT stage finished but whose DPO stage saved nothing yet: DPO starts over.
        resume_dpo = resume and (train_file is None or any(dpo_checkpoints.glob("checkpoint-*")))
        trainer, dpo = _dpo_stage(model, tokenizer, pairs_file, dpo_checkpoints, hyper, common, resume=resume_dpo)
        model = finish_stage("dpo")
    main = trainer.is_world_process_zero()
    result = TrainResult(
        sft=sft,
        dpo=dpo,
        device=str(trainer.args.device),
        processes=int(trainer.accelerator.num_processes),
        main_process=main,
    )
    if main:
        if adapter:  # the base's tokenizer and config serve it: only the adapters and what they apply to
            candidate = {**candidate, "format": ADAPTER_FORMAT, "adapters": adapters, "base_sha256": str(base_sha256)}
        else:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        staging.mkdir(parents=True, exist_ok=True)
        (staging / CANDIDATE_FILE).write_text(json.dumps(candidate, sort_keys=True) + "\n", encoding="utf-8")
        shutil.rmtree(output, ignore_errors=True)
        staging.rename(output)  # the model directory appears whole or not at all
    trainer.accelerator.wait_for_everyone()
    return result


def _lora(hyper: Hyperparameters) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=hyper.lora_rank,
        lora_alpha=hyper.lora_alpha,
        lora_dropout=hyper.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _dataset(path: Path, columns: list[str]) -> Any:
    """A stage's JSONL file (written by the job) as a datasets.Dataset of just these columns."""
    from datasets import load_dataset

    with _quiet_hub_progress():
        return load_dataset("json", data_files=str(path), split="train").select_columns(columns)


def _sft_stage(
    model: Any,
    tokenizer: Any,
    train_file: Path,
    checkpoints: Path,
    hyper: Hyperparameters,
    common: dict[str, Any],
    *,
    resume: bool,
) -> tuple[Any, StageResult]:
    from trl import SFTConfig, SFTTrainer

    dataset = _dataset(train_file, ["prompt", "completion"])
    config = SFTConfig(
        output_dir=str(checkpoints),
        max_steps=hyper.max_steps or -1,
        num_train_epochs=hyper.epochs,
        learning_rate=hyper.learning_rate,
        completion_only_loss=True,
        activation_checkpointing=False,  # 270M parameters fit; recomputing activations only costs time
        **common,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=_lora(hyper))
    outcome = _train_or_restore(trainer, checkpoints, resume)
    losses = [
        {"step": float(e["step"]), "loss": float(e["loss"]), "learning_rate": float(e.get("learning_rate", 0.0))}
        for e in trainer.state.log_history
        if "loss" in e
    ]
    return trainer, _stage_result(trainer, outcome, losses)


def _dpo_stage(
    model: Any,
    tokenizer: Any,
    pairs_file: Path,
    checkpoints: Path,
    hyper: Hyperparameters,
    common: dict[str, Any],
    *,
    resume: bool,
) -> tuple[Any, StageResult]:
    from trl import DPOConfig, DPOTrainer

    dataset = _dataset(pairs_file, ["prompt", "chosen", "rejected"])
    config = DPOConfig(
        output_dir=str(checkpoints),
        max_steps=hyper.dpo_max_steps or -1,
        num_train_epochs=hyper.dpo_epochs,
        learning_rate=hyper.dpo_learning_rate,
        beta=hyper.dpo_beta,
        loss_type=["sigmoid"],  # the DPO paper's loss
        activation_checkpointing=False,  # TRL turns it on by default; as in SFT, recomputing only costs time here
        **common,
    )
    # With a peft_config and no ref_model, TRL's reference is this model with the adapter disabled.
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=_lora(hyper))
    outcome = _train_or_restore(trainer, checkpoints, resume)
    losses = [
        {
            "step": float(e["step"]),
            "loss": float(e["loss"]),
            "learning_rate": float(e.get("learning_rate", 0.0)),
            "reward_accuracy": float(e.get("rewards/accuracies", 0.0)),
            "reward_margin": float(e.get("rewards/margins", 0.0)),
            "chosen_reward": float(e.get("rewards/chosen", 0.0)),
            "rejected_reward": float(e.get("rewards/rejected", 0.0)),
        }
        for e in trainer.state.log_history
        if "loss" in e
    ]
    return trainer, _stage_result(trainer, outcome, losses)


def _train_or_restore(trainer: Any, checkpoints: Path, resume: bool) -> Any:
    """Train (with `resume`, from the last checkpoint); None when that checkpoint finished the stage.

    A stage whose last checkpoint is at its max steps is restored, not resumed: transformers
    5.24's loop, resuming mid-epoch, runs one more step before it checks max_steps (with a
    cosine schedule past its end, at a learning rate above 0 again), so a finished SFT stage
    would change when a run interrupted in its DPO stage is resumed."""
    if not resume:
        return trainer.train()
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last is None:
        raise ValueError(f"--resume: no checkpoint in {checkpoints} yet; start the run again without --resume")
    state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
    if 0 < trainer.args.max_steps <= state.global_step:
        trainer._load_from_checkpoint(last)  # the adapter's weights, as train() loads them before resuming
        trainer.state = state
        return None
    return trainer.train(resume_from_checkpoint=last)


def _stage_result(trainer: Any, outcome: Any, losses: list[dict[str, float]]) -> StageResult:
    """`outcome`: what trainer.train() returned, or None for a stage restored whole from its checkpoint."""
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    if outcome is None:
        mean = sum(e["loss"] for e in losses) / len(losses) if losses else None
        return StageResult(losses, mean, int(trainer.state.global_step), 0.0, tokens, 0.0)
    wall = float(outcome.metrics.get("train_runtime", 0.0))
    return StageResult(
        loss_history=losses,
        train_loss=float(outcome.training_loss) if outcome.training_loss == outcome.training_loss else None,
        steps=int(trainer.state.global_step),
        wall_s=round(wall, 2),
        tokens=tokens,
        tokens_per_s=round(tokens / wall, 1) if wall else 0.0,
    )
