"""One supervised fine-tuning run: TRL's SFTTrainer with a PEFT LoRA adapter, merged for serving.

Heavy libraries (torch, transformers, trl, peft, datasets, accelerate) are imported inside
`train` only. The examples are prompt/completion pairs, so the loss is on the answer alone
(TRL's completion-only loss). On a CPU it runs in float32 with `use_cpu`; on a GPU in bfloat16.
Under `accelerate launch` the Trainer spreads the batches over the processes; only the main
process merges and writes the model.
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

from bot.generation.model_store import CANDIDATE_FILE

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

    def __post_init__(self) -> None:
        if self.max_steps < 0 or self.epochs <= 0 or self.learning_rate <= 0 or self.batch_size <= 0:
            raise ValueError("max steps must be >= 0; epochs, learning rate and batch size must be positive")
        if self.lora_rank <= 0 or self.max_length < 64 or self.save_steps <= 0 or self.gradient_accumulation <= 0:
            raise ValueError("LoRA rank and save steps must be positive and max length at least 64")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class TrainResult:
    loss_history: list[dict[str, float]]
    train_loss: float | None
    steps: int
    wall_s: float
    tokens: int
    tokens_per_s: float
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


def train(
    model_path: str,
    train_file: Path,
    checkpoints: Path,
    output: Path,
    hyper: Hyperparameters,
    *,
    candidate: dict[str, str],
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune `model_path` on `train_file` (prompt/completion JSONL), merge, save to `output`.

    `candidate` ({"candidate_id", "base_model"}) is written into the model directory so the
    generator's model store names its answers after the candidate.
    """
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(hyper.seed)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    with _quiet_hub_progress():
        tokenizer = load_tokenizer(model_path)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation="eager"
        )
        dataset = load_dataset("json", data_files=str(train_file), split="train")
    dataset = dataset.select_columns(["prompt", "completion"])
    config = SFTConfig(
        output_dir=str(checkpoints),
        max_steps=hyper.max_steps or -1,
        num_train_epochs=hyper.epochs,
        learning_rate=hyper.learning_rate,
        per_device_train_batch_size=hyper.batch_size,
        gradient_accumulation_steps=hyper.gradient_accumulation,
        warmup_steps=hyper.warmup_ratio,
        lr_scheduler_type="cosine",
        max_length=hyper.max_length,
        completion_only_loss=True,
        seed=hyper.seed,
        data_seed=hyper.seed,
        use_cpu=not on_gpu,
        bf16=bf16,
        fp16=False,
        activation_checkpointing=False,  # 270M parameters fit; recomputing activations only costs time
        logging_steps=1,
        save_strategy="steps",
        save_steps=hyper.save_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=not progress,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=hyper.lora_rank,
        lora_alpha=hyper.lora_alpha,
        lora_dropout=hyper.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    has_checkpoint = any(checkpoints.glob("checkpoint-*"))
    if resume and not has_checkpoint:
        raise ValueError(f"--resume: no checkpoint in {checkpoints} yet; start the run again without --resume")
    outcome = trainer.train(resume_from_checkpoint=True if resume else None)
    state = trainer.state
    losses = [
        {"step": float(e["step"]), "loss": float(e["loss"]), "learning_rate": float(e.get("learning_rate", 0.0))}
        for e in state.log_history
        if "loss" in e
    ]
    wall = float(outcome.metrics.get("train_runtime", 0.0))
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    main = trainer.is_world_process_zero()
    result = TrainResult(
        loss_history=losses,
        train_loss=float(outcome.training_loss) if outcome.training_loss == outcome.training_loss else None,
        steps=int(state.global_step),
        wall_s=round(wall, 2),
        tokens=tokens,
        tokens_per_s=round(tokens / wall, 1) if wall else 0.0,
        device=str(trainer.args.device),
        processes=int(trainer.accelerator.num_processes),
        main_process=main,
    )
    if main:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        staging = output.with_name(f".{output.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / CANDIDATE_FILE).write_text(json.dumps(candidate, sort_keys=True) + "\n", encoding="utf-8")
        shutil.rmtree(output, ignore_errors=True)
        staging.rename(output)  # the model directory appears whole or not at all
    trainer.accelerator.wait_for_everyone()
    return result
