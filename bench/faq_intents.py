"""Finding an FAQ entry by its question, on Banking77 used as an FAQ base.

Banking77 (PolyAI, CC-BY-4.0, github.com/PolyAI-LDN/task-specific-datasets,
banking_data/{train,test}.csv, columns `text,category`) is not in this repository; pass
the two CSV paths. Every train row becomes one FAQ entry: question = the row's text,
answer = "This is about <intent>." (the category with spaces, e.g. "This is about card
arrival."), so the answer names the intent in a few words, as a real FAQ answer shares
few words with most ways of asking. The entries go through the real loader, chunker,
builder and index with the bundled embedder; each test question is asked once, and a
hit is a top-1 entry of the question's intent. Three scorings, from one index, one run:

- `hybrid before`: the retriever as it was before FAQ question vectors
  (`faq_question_weight=0`: whole-entry cosine + BM25 blend);
- `questions NN`: plain nearest neighbour over the entries' questions alone (a FAISS
  flat index of embed(question), same embedder), no answer, no BM25;
- `hybrid now`: the retriever as it is (0.7 x question cosine + 0.3 x whole-entry cosine,
  + BM25 blend as before).

`--tune` asks a seeded random 1,000 train questions against the other train entries
instead (test.csv is not read): the tuning set that choices were made on, so the test
figures stay held out. Latency is per query, one at a time; queries are embedded once
up front (the same for every scoring) and that embedding time is reported on its own.
`--cache DIR` keeps embeddings by exact text across runs (the model is deterministic),
which only saves time: a cold run embeds about 23,000 texts.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.faq_intents /tmp/banking/train.csv /tmp/banking/test.csv \\
        --out /tmp/faq_intents.json [--tune] [--cache /tmp/faq-cache]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever
from retrieval.types import SearchFilters

TUNE_QUERIES = 1000


def answer_for(category: str) -> str:
    return f"This is about {category.replace('_', ' ')}."


def read_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row["text"].strip(), row["category"].strip()) for row in csv.DictReader(handle)]


class CachingEmbedder:
    """The real embedder, remembering vectors by exact text (optionally on disk)."""

    def __init__(self, inner: SentenceEmbedder, cache_dir: Path | None) -> None:
        self._inner = inner
        self._path = cache_dir / f"{hashlib.sha256(inner.model_id.encode()).hexdigest()[:12]}.npz" if cache_dir else None
        self._vectors: dict[str, np.ndarray] = {}
        if self._path is not None and self._path.is_file():
            stored = np.load(self._path)
            self._vectors = dict(zip(stored["texts"].tolist(), stored["vectors"], strict=True))
        self.embedded = 0

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def max_tokens(self) -> int:
        return self._inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)

    def embed(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            self._vectors.update(zip(todo, self._inner.embed(todo), strict=True))
            self.embedded += len(todo)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32)

    def save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self._vectors)
        np.savez(self._path, texts=np.array(texts), vectors=np.stack([self._vectors[t] for t in texts]))


def write_faq(path: Path, entries: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "answer", "tags"])
        for number, (question, category) in enumerate(entries):
            writer.writerow([f"{number:05d}", question, answer_for(category), category])


def score(name: str, predicted: list[str], expected: list[str], latencies_ms: list[float]) -> dict[str, object]:
    hits = sum(p == e for p, e in zip(predicted, expected, strict=True))
    return {
        "scoring": name,
        "top1_intent_accuracy": round(hits / len(expected), 4),
        "hits": hits,
        "queries": len(expected),
        "latency_ms_median": round(statistics.median(latencies_ms), 3),
        "latency_ms_p95": round(float(np.percentile(latencies_ms, 95)), 3),
    }


def ask_retriever(retriever: Retriever, queries: list[str], entries: list[tuple[str, str]]) -> tuple[list[str], list[float]]:
    """Intent of the top entry per query (the entry's id is its row number in `entries`)."""
    predicted, latencies = [], []
    filters = SearchFilters.for_agents()
    for query in queries:
        started = time.perf_counter()
        result = retriever.search(query, k=1, filters=filters)
        latencies.append((time.perf_counter() - started) * 1e3)
        # By id, not by tag: tags are lower-cased and two Banking77 categories are not.
        predicted.append(entries[int(result.passages[0].document_id.rsplit("#", 1)[1])][1] if result.passages else "")
    return predicted, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path, help="banking_data/train.csv")
    parser.add_argument("test", type=Path, help="banking_data/test.csv (not read with --tune)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--tune", action="store_true", help=f"{TUNE_QUERIES} train questions against the other train rows")
    parser.add_argument("--weights", type=float, nargs="*", default=[], help="also try these faq_question_weight values")
    parser.add_argument(
        "--lexical-weights", type=float, nargs="*", default=[0.1], help="with --weights: lexical_weight values to try"
    )
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep embeddings in between runs")
    args = parser.parse_args()

    train = read_rows(args.train)
    if args.tune:
        picked = set(np.random.default_rng(0).choice(len(train), TUNE_QUERIES, replace=False).tolist())
        entries = [row for i, row in enumerate(train) if i not in picked]
        queries = [row for i, row in enumerate(train) if i in picked]
    else:
        entries, queries = train, read_rows(args.test)
    texts, expected = [q for q, _ in queries], [c for _, c in queries]

    inner = SentenceEmbedder()
    inner.warm_up()
    embedder = CachingEmbedder(inner, args.cache)
    report: dict[str, object] = {
        "set": "tune: train questions vs the other train entries" if args.tune else "test questions vs train entries",
        "entries": len(entries),
        "queries": len(queries),
        "intents": len({c for _, c in entries}),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "kb"
        folder.mkdir()
        write_faq(folder / "banking-faq.csv", entries)
        started = time.perf_counter()
        ingest = KnowledgeBaseBuilder(Path(tmp) / "index", embedder).ingest([folder])  # type: ignore[arg-type]
        if ingest.errors:
            raise SystemExit(f"ingest failed: {ingest.errors}")
        report["ingest_s"] = round(time.perf_counter() - started, 1)

        # One embedding per query, up front and timed alone, so the scorings compare search only.
        timings = []
        for text in texts[:200]:
            started = time.perf_counter()
            inner.embed([text])
            timings.append((time.perf_counter() - started) * 1e3)
        report["query_embed_ms_median"] = round(statistics.median(timings), 3)
        query_vectors = embedder.embed(texts)
        embedder.save()

        rows = []
        predictions: dict[str, list[str]] = {}
        before = Retriever(Path(tmp) / "index", embedder, faq_question_weight=0)  # type: ignore[arg-type]
        predicted, latencies = ask_retriever(before, texts, entries)
        rows.append(score("hybrid before", predicted, expected, latencies))
        predictions["hybrid before"] = predicted
        print(json.dumps(rows[-1]), flush=True)

        questions = faiss.IndexFlatIP(embedder.dimension)
        questions.add(embedder.embed([q for q, _ in entries]))
        predicted, latencies = [], []
        for text in texts:
            started = time.perf_counter()
            _, found = questions.search(embedder.embed([text]), 1)
            latencies.append((time.perf_counter() - started) * 1e3)
            predicted.append(entries[int(found[0][0])][1])
        rows.append(score("questions NN", predicted, expected, latencies))
        predictions["questions NN"] = predicted
        print(json.dumps(rows[-1]), flush=True)

        now = Retriever(Path(tmp) / "index", embedder)  # type: ignore[arg-type]
        predicted, latencies = ask_retriever(now, texts, entries)
        rows.append(score("hybrid now", predicted, expected, latencies))
        predictions["hybrid now"] = predicted
        print(json.dumps(rows[-1]), flush=True)
        for weight in args.weights:
            for lexical_weight in args.lexical_weights:
                variant = Retriever(
                    Path(tmp) / "index",
                    embedder,  # type: ignore[arg-type]
                    faq_question_weight=weight,
                    lexical_weight=lexical_weight,
                )
                predicted, latencies = ask_retriever(variant, texts, entries)
                name = f"question weight {weight}, lexical weight {lexical_weight}"
                rows.append({"variant": True, **score(name, predicted, expected, latencies)})
                print(json.dumps(rows[-1]), flush=True)
        assert len(query_vectors) == len(texts)
    embedder.save()
    accuracy = {str(r["scoring"]): float(r["top1_intent_accuracy"]) for r in rows}  # type: ignore[arg-type]
    # Paired: queries one scoring gets right and the other wrong (the rest agree).
    right = {name: [p == e for p, e in zip(predictions[name], expected, strict=True)] for name in predictions}
    report["discordant"] = {
        f"now right, {other} wrong / {other} right, now wrong": [
            sum(a and not b for a, b in zip(right["hybrid now"], right[other], strict=True)),
            sum(b and not a for a, b in zip(right["hybrid now"], right[other], strict=True)),
        ]
        for other in ("hybrid before", "questions NN")
    }
    report["results"] = rows
    report["ratio_now_to_before"] = round(accuracy["hybrid now"] / accuracy["hybrid before"], 4)
    report["ratio_now_to_questions_nn"] = round(accuracy["hybrid now"] / accuracy["questions NN"], 4)
    report["fresh_embeddings"] = embedder.embedded
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
