"""The learning loop on the sample help center: training throughput, loss, and held-out quality
before and after, measured in one run.

1. Index the sample help center in a temporary data directory (or use --data-dir's index).
2. Train a candidate from the knowledge base alone (`training.job.run`, what `supportbot train` runs):
   wall time, tokens/s (non-padding tokens the trainer saw), loss at the first and last step.
3. Evaluate on the held-out split, in the same run and on the same questions: the untuned base
   model (the baseline), the trained candidate, and the extractive composer.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.training --max-steps 4 --batch-size 2 --max-length 384 --eval-limit 10
    # as a module from the repository root: bench/server.py would shadow the server package
    # on a GPU (the same job; bfloat16, no use_cpu):
    python -m bench.training --epochs 3 --batch-size 16 --max-length 1024 --eval-limit 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bot.evaluation import load_turns
from bot.generation.model_store import resolve_generator
from knowledge_base.components import build_builder, build_embedder, build_retriever
from server.cli import EVAL_TURNS
from server.models_cli import SUMMARY_ROWS, evaluate_systems
from server.settings import SAMPLE_KB_DIR, Settings
from training.job import TrainJob, run
from training.registry import MODEL_DIR, ModelRegistry
from training.trainer import Hyperparameters

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="Data directory (default: a temporary one with the sample indexed).")
    parser.add_argument("--models-dir", type=Path, default=REPO / "data" / "models", help="The dequantized base model cache.")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--limit", type=int, default=0, help="Train on at most N examples (0: all).")
    parser.add_argument("--eval-limit", type=int, default=10, help="First N held-out questions (0: all).")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", type=Path, help="Write the figures as JSON here.")
    args = parser.parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-training-"))
    settings = Settings(data_dir=data_dir, model_cache_dir=args.models_dir)
    embedder = build_embedder(settings)
    build_builder(settings, embedder).ensure_built([SAMPLE_KB_DIR])
    retriever = build_retriever(settings, embedder)
    model_path, model_id = resolve_generator(settings.generator_model, settings.models_dir)
    hyper = Hyperparameters(
        max_steps=args.max_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        lora_rank=args.lora_rank,
        save_steps=max(args.max_steps, 50),
    )
    registry = ModelRegistry(settings.registry_dir)
    job = TrainJob(
        base_model=settings.generator_model,
        model_path=model_path,
        registry=registry,
        eval_file=EVAL_TURNS,
        retriever=retriever,
        hyper=hyper,
        limit=args.limit,
        base_model_id=model_id,
        progress=False,
    )
    started = time.perf_counter()
    manifest = run(job)
    job_wall = time.perf_counter() - started
    losses = manifest["loss_history"]

    labelled = [t for t in load_turns(EVAL_TURNS) if t.split == "heldout"]
    labelled = labelled[: args.eval_limit] if args.eval_limit else labelled
    candidate_dir = registry.directory(manifest["candidate_id"]) / MODEL_DIR
    systems = [("base", settings.generator_model), ("trained", str(candidate_dir)), ("composer", None)]
    started = time.perf_counter()
    summaries, index_version = evaluate_systems(settings, labelled, systems, args.max_new_tokens, args.concurrency)
    eval_wall = time.perf_counter() - started

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {manifest['training']['device']}",
        "libraries": manifest["libraries"],
        "candidate": manifest["candidate_id"],
        "examples": manifest["examples"],
        "hyperparameters": manifest["hyperparameters"],
        "train_wall_s": manifest["training"]["wall_s"],
        "job_wall_s": round(job_wall, 1),
        "tokens": manifest["training"]["tokens"],
        "tokens_per_s": manifest["training"]["tokens_per_s"],
        "loss_first": losses[0]["loss"] if losses else None,
        "loss_last": losses[-1]["loss"] if losses else None,
        "eval_questions": len(labelled),
        "eval_wall_s": round(eval_wall, 1),
        "index_version": index_version,
        "summaries": summaries,
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "summaries"}, indent=1))
    names = ("base", "trained", "composer")
    print(f"{len(labelled)} held-out questions; max {args.max_new_tokens} new tokens")
    print(f"{'':32}" + "".join(f"{n:>12}" for n in names))
    for label, key, fmt in SUMMARY_ROWS:
        print(f"{label:32}" + "".join(f"{fmt.format(summaries[n][key]):>12}" for n in names))
    if args.output:
        args.output.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
