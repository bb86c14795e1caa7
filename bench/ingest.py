"""Ingestion throughput (chunks/s) on this machine, with same-run baselines.

Copies the sample help center COPIES times (each copy its own documents) and measures:
- a cold full ingest with the default batch size (64 texts per embedding call);
- the same ingest embedding one chunk at a time (batch size 1), the naive baseline;
- a re-ingest with nothing changed (no embedding at all), and one with one file changed.

    .venv/bin/python bench/ingest.py [--copies 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder

SAMPLES = Path(__file__).resolve().parent.parent / "knowledge_base" / "samples" / "help-center"


def timed_ingest(root: Path, folder: Path, embedder: SentenceEmbedder) -> tuple[float, int]:
    started = time.perf_counter()
    report = KnowledgeBaseBuilder(root, embedder).ingest([folder])
    assert not report.errors, report.errors
    return time.perf_counter() - started, report.chunks_embedded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for i in range(args.copies):
            shutil.copytree(SAMPLES, corpus / f"copy{i:02d}")
        batched = SentenceEmbedder(batch_size=64)
        batched.warm_up()
        single = SentenceEmbedder(batch_size=1)
        single.warm_up()

        seconds, chunks = timed_ingest(Path(tmp) / "a", corpus, batched)
        base_seconds, base_chunks = timed_ingest(Path(tmp) / "b", corpus, single)
        unchanged_seconds, unchanged_chunks = timed_ingest(Path(tmp) / "a", corpus, batched)
        changed = corpus / "copy00" / "billing" / "refunds.md"
        changed.write_text(changed.read_text() + "\nRefunds to gift cards are instant.\n")
        one_seconds, one_chunks = timed_ingest(Path(tmp) / "a", corpus, batched)

    result = {
        "cores": os.cpu_count(),
        "documents": 130 * args.copies,
        "chunks": chunks,
        "full_ingest_s": round(seconds, 2),
        "chunks_per_s": round(chunks / seconds, 1),
        "baseline_batch1_s": round(base_seconds, 2),
        "baseline_chunks_per_s": round(base_chunks / base_seconds, 1),
        "speedup_vs_batch1": round(base_seconds / seconds, 2),
        "reingest_unchanged_s": round(unchanged_seconds, 2),
        "reingest_unchanged_chunks_embedded": unchanged_chunks,
        "reingest_one_changed_s": round(one_seconds, 2),
        "reingest_one_changed_chunks_embedded": one_chunks,
        "full_vs_one_changed": round(seconds / one_seconds, 1),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
