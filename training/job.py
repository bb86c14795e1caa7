"""`supportbot train`: build the data, train, register the candidate with its manifest.

The caller (the CLI) passes in what it built from settings: the retriever over the live index
(or None without `--from-kb`), where the base model lies, the registry. A run writes its
candidate's manifest first with status `training` (so `--resume` can find it), then `ready`
with the loss histories (SFT, then DPO when there are preference pairs) and the merged model
(or, with `adapter`, the LoRA adapters and the sha256 of the base they apply to), or `failed`
with the error.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.generation.model_store import weights_sha256
from retrieval.retriever import Retriever
from training.examples import (
    DatasetError,
    EvalExclusion,
    ExampleBuilder,
    ExampleSet,
    feedback_examples,
    knowledge_base_examples,
    preference_pairs,
    read_export,
    read_preferences,
)
from training.registry import CHECKPOINTS_DIR, MODEL_DIR, ModelRegistry
from training.trainer import (
    Hyperparameters,
    StageResult,
    TrainResult,
    agree_on,
    distributed_state,
    library_versions,
    load_tokenizer,
    train,
)

TRAIN_FILE = "train.jsonl"
PAIRS_FILE = "pairs.jsonl"


@dataclass(slots=True)
class TrainJob:
    base_model: str  # the generator setting trained from (what a promoted candidate replaces)
    model_path: str  # where its weights are (the model store's resolution)
    registry: ModelRegistry
    eval_file: Path
    retriever: Retriever | None
    feedback: list[Path] = field(default_factory=list)
    preferences: list[Path] = field(default_factory=list)  # supportbot.preference.v1 exports, for the DPO stage
    company: str = "Brewlo"
    top_k: int = 4
    hyper: Hyperparameters = field(default_factory=Hyperparameters)
    limit: int = 0  # at most this many examples (a seeded sample); 0: all
    exclude_heldout_documents: bool = True
    resume: bool = False
    progress: bool = True
    base_model_id: str = ""  # the id the base model's answers record (default: base_model)
    accepted_models: frozenset[str] = frozenset()  # other model ids feedback may come from (candidates of this base)
    adapter: bool = False  # keep the LoRA adapters (MBs) instead of a merged checkpoint (a GB)


def build_examples(job: TrainJob, tokenizer: Any) -> tuple[ExampleSet, EvalExclusion]:
    """All examples and preference pairs of the run, evaluation questions excluded; DatasetError for unusable input."""
    if job.retriever is None and not job.feedback and not job.preferences:
        raise DatasetError("nothing to train on: use the knowledge base (--from-kb) or give --feedback or --preferences exports")
    exclusion = EvalExclusion.from_file(job.eval_file, exclude_heldout_documents=job.exclude_heldout_documents)
    builder = ExampleBuilder(
        lambda text: len(tokenizer.encode(text, add_special_tokens=False)), company=job.company, max_length=job.hyper.max_length
    )
    result = ExampleSet()
    base = job.base_model_id or job.base_model
    records = [read_export(path, base, job.accepted_models) for path in job.feedback]
    pairs = [read_preferences(path, base, job.accepted_models) for path in job.preferences]  # all files checked first
    if job.retriever is not None:
        knowledge_base_examples(job.retriever, builder, exclusion, top_k=job.top_k, result=result)
    for batch in records:
        feedback_examples(batch, builder, exclusion, top_k=job.top_k, result=result)
    for batch in pairs:
        preference_pairs(batch, builder, exclusion, top_k=job.top_k, result=result)
    if not result.examples and not result.pairs:
        raise DatasetError(
            f"no training examples or preference pairs left (skipped: {dict(result.skipped)}; excluded as evaluation: "
            f"{len(exclusion.by_document)} by document, {len(exclusion.by_question)} by question)"
        )
    if job.limit and len(result.examples) > job.limit:
        result.examples = sorted(random.Random(job.hyper.seed).sample(result.examples, job.limit), key=lambda e: e.id)
    result.exclusions = exclusion.summary(job.eval_file)
    return result, exclusion


def run(job: TrainJob) -> dict[str, Any]:
    """Train one candidate; returns its manifest (status `ready`)."""
    state = distributed_state()
    registry = job.registry
    if job.resume:
        unfinished = registry.latest_unfinished() if state.is_main_process else ""
        candidate_id = agree_on(unfinished or "")
        if not candidate_id:
            raise DatasetError(f"--resume: no unfinished run in {registry.root}; start a new one without --resume")
        manifest = registry.manifest(candidate_id)
        hyper = Hyperparameters(**manifest["hyperparameters"])  # a resumed run keeps the options it started with
        adapter = manifest.get("model_format") == "adapter"
        if adapter and weights_sha256(job.model_path) != manifest.get("base_sha256"):
            raise DatasetError(
                f"--resume: {job.model_path} is not the base model {candidate_id} started from (its weights changed)"
            )
    else:
        candidate_id = agree_on(registry.new_candidate_id())
        hyper = job.hyper
        adapter = job.adapter
    directory = registry.directory(candidate_id)
    train_file, pairs_file = directory / TRAIN_FILE, directory / PAIRS_FILE
    if not job.resume:
        tokenizer = load_tokenizer(job.model_path)
        examples, _ = build_examples(job, tokenizer)
        if state.is_main_process:
            base_sha256 = weights_sha256(job.model_path) if adapter else None  # what loading the adapters checks
            directory.mkdir(parents=True, exist_ok=True)
            digest = examples.write_jsonl(train_file)
            pairs_digest = examples.write_pairs_jsonl(pairs_file)
            manifest = {
                "candidate_id": candidate_id,
                "status": "training",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "base_model": job.base_model,
                "base_model_path": job.model_path,
                "base_sha256": base_sha256,
                "model_format": "adapter" if adapter else "merged",
                "data": {
                    "train_file": TRAIN_FILE,
                    "train_sha256": digest,
                    "from_knowledge_base": job.retriever is not None,
                    "index_version": job.retriever.snapshot.version if job.retriever is not None else None,
                    "feedback_files": [{"path": str(p), "sha256": _sha256(p)} for p in job.feedback],
                    "pairs_file": PAIRS_FILE,
                    "pairs_sha256": pairs_digest,
                    "preference_files": [{"path": str(p), "sha256": _sha256(p)} for p in job.preferences],
                    "limit": job.limit,
                },
                "examples": {"total": len(examples.examples), **examples.counts()},
                "pairs": {"total": len(examples.pairs), **examples.pair_counts()},
                "stages": [stage for stage, n in (("sft", examples.examples), ("dpo", examples.pairs)) if n],
                "skipped": dict(examples.skipped),
                "exclusions": examples.exclusions,
                "hyperparameters": hyper.as_dict(),
                "seed": hyper.seed,
                "libraries": library_versions(),
                "loss_history": [],
                "dpo": None,
                "evaluations": {},
            }
            registry.write_manifest(candidate_id, manifest)
        state.wait_for_everyone()
    started = registry.manifest(candidate_id)
    stages = started.get("stages", ["sft"])  # a run from before DPO existed: SFT only
    try:
        result = train(
            job.model_path,
            train_file if "sft" in stages else None,
            directory / CHECKPOINTS_DIR,
            directory / MODEL_DIR,
            hyper,
            candidate={"candidate_id": candidate_id, "base_model": job.base_model},
            pairs_file=pairs_file if "dpo" in stages else None,
            resume=job.resume,
            progress=job.progress,
            adapter=adapter,
            base_sha256=started.get("base_sha256"),
        )
    except BaseException as exc:
        if state.is_main_process:
            registry.update_manifest(candidate_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if not result.main_process:
        return registry.manifest(candidate_id)
    model_bytes = sum(p.stat().st_size for p in (directory / MODEL_DIR).rglob("*") if p.is_file())
    return registry.update_manifest(candidate_id, status="ready", error=None, model_bytes=model_bytes, **_training_fields(result))


def _training_fields(result: TrainResult) -> dict[str, Any]:
    sft = result.sft or StageResult([], None, 0, 0.0, 0, 0.0)  # DPO alone: no SFT steps
    fields: dict[str, Any] = {
        "loss_history": sft.loss_history,
        "training": {
            "train_loss": sft.train_loss,
            "steps": sft.steps,
            "wall_s": sft.wall_s,
            "tokens": sft.tokens,
            "tokens_per_s": sft.tokens_per_s,
            "device": result.device,
            "processes": result.processes,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "dpo": None,
    }
    if result.dpo is not None:
        last = result.dpo.loss_history[-1] if result.dpo.loss_history else {}
        fields["dpo"] = {
            "loss_history": result.dpo.loss_history,
            "train_loss": result.dpo.train_loss,
            "final_reward_accuracy": last.get("reward_accuracy"),
            "final_reward_margin": last.get("reward_margin"),
            "steps": result.dpo.steps,
            "wall_s": result.dpo.wall_s,
            "tokens": result.dpo.tokens,
            "tokens_per_s": result.dpo.tokens_per_s,
        }
    return fields


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
