"""Time to first text for visitors chatting at once, per answer mode, over the real websocket.

Starts the real server (`supportbot serve`) once per answer mode on a copy of the sample
index, then `--visitors` conversations at once each ask `--rounds` in-scope questions of the
held-out split one after another, and measures on the client: send -> first `token` frame
(what the visitor waits for) and send -> `done`. Both modes run in the same invocation, so
the generative figures (the path every visitor got before the composer) are the baseline.

    .venv/bin/python -m bench.first_text [--visitors 8] [--rounds 3] [--modes extractive generative]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.server import REPO, connect, percentile, start_server
from bot.evaluation import load_turns

EVAL_TURNS = REPO / "knowledge_base" / "samples" / "eval" / "turns.jsonl"


async def visitor(url: str, questions: list[str]) -> list[dict[str, Any]]:
    ws = await connect(url)
    seen = []
    try:
        for n, question in enumerate(questions):
            await asyncio.sleep(0.5)  # a visitor reads before typing the next question
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "client_message_id": str(n), "text": question}))
            first = None
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if frame["type"] == "token" and first is None:
                    first = time.perf_counter() - sent
                if frame["type"] == "error":
                    raise SystemExit(f"the server refused {question!r}: {frame}")
                if frame["type"] == "done":
                    seen.append({"first_text_s": first, "done_s": time.perf_counter() - sent, "path": frame["path"]})
                    break
    finally:
        await ws.close()
    return seen


async def run_mode(url: str, questions: list[str], visitors: int, rounds: int) -> dict[str, Any]:
    batches = [questions[i * rounds : (i + 1) * rounds] for i in range(visitors)]
    started = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(visitor(url, b) for b in batches)) for r in rs]
    first = [r["first_text_s"] for r in results if r["first_text_s"] is not None]
    paths: dict[str, int] = {}
    for r in results:
        paths[r["path"]] = paths.get(r["path"], 0) + 1
    return {
        "answers": len(results),
        "first_text_p50_s": round(statistics.median(first), 3),
        "first_text_p95_s": round(percentile(first, 0.95), 3),
        "first_text_max_s": round(max(first), 3),
        "done_p50_s": round(statistics.median(r["done_s"] for r in results), 3),
        "paths": paths,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["extractive", "generative"], choices=["extractive", "generative"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--index", type=Path, default=REPO / "data" / "index")
    parser.add_argument("--models-dir", type=Path, default=REPO / "data" / "models")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "first_text.json")
    args = parser.parse_args()
    questions = [t.question for t in load_turns(EVAL_TURNS) if t.split == "heldout" and t.in_scope and not t.before]
    needed = args.visitors * args.rounds
    if len(questions) < needed:
        raise SystemExit(f"only {len(questions)} held-out in-scope questions for {needed} asks")
    report: dict[str, Any] = {
        "visitors": args.visitors,
        "rounds": args.rounds,
        "max_new_tokens": args.max_new_tokens,
        "modes": {},
    }
    for mode in args.modes:
        with tempfile.TemporaryDirectory(prefix="sb-first-text-") as scratch:
            data = Path(scratch)
            shutil.copytree(args.index, data / "index")
            env = {"SUPPORTBOT_ANSWER_MODE": mode, "SUPPORTBOT_GENERATOR_MAX_NEW_TOKENS": str(args.max_new_tokens)}
            process, base = start_server(data, args.models_dir, extra_env=env)
            try:
                url = base.replace("http", "ws") + "/v1/chat"
                report["modes"][mode] = asyncio.run(run_mode(url, questions[:needed], args.visitors, args.rounds))
            finally:
                process.terminate()
                process.wait(timeout=60)
        print(mode, json.dumps(report["modes"][mode]))
    if {"extractive", "generative"} <= set(report["modes"]):
        e, g = report["modes"]["extractive"], report["modes"]["generative"]
        report["ratio_p50"] = round(g["first_text_p50_s"] / e["first_text_p50_s"], 1)
        print(
            f"first text p50: extractive {e['first_text_p50_s']} s, generative {g['first_text_p50_s']} s ({report['ratio_p50']}x)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
