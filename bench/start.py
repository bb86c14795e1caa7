"""How light the server is when it needs no generator: seconds to ready and memory, per answer mode.

Starts the real server (`supportbot serve`, its own embedded Redis) on a copy of an index,
once per answer mode and round, alternating, and reads the time from launch to `/readyz`
answering 200 and the server's RSS a moment after (its Redis's apart). `extractive` (and
`auto` without an evaluation record) never loads the generator; `generative` does, and is
the baseline measured in the same run.

    .venv/bin/python -m bench.start --index DATA_DIR/index [--modes extractive generative] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.server import REPO, redis_pid, rss_mb, server_rss_mb, start_server


def one_start(index: Path, models_dir: Path, mode: str) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="sb-start-"))
    try:
        shutil.copytree(index, data_dir / "index")
        launched = time.perf_counter()
        process, _ = start_server(data_dir, models_dir, extra_env={"SUPPORTBOT_ANSWER_MODE": mode})
        ready_s = time.perf_counter() - launched
        try:
            time.sleep(2)  # what it holds once serving, not a peak while loading
            redis = redis_pid(data_dir)
            return {
                "mode": mode,
                "ready_s": round(ready_s, 2),
                "server_rss_mb": round(server_rss_mb(process.pid, redis), 1),
                "redis_rss_mb": round(rss_mb(redis), 1) if redis else None,
            }
        finally:
            process.terminate()
            process.wait(60)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=REPO / "data" / "index")
    parser.add_argument("--models-dir", type=Path, default=REPO / "data" / "models")
    parser.add_argument("--modes", nargs="+", default=["extractive", "generative"], choices=["auto", "extractive", "generative"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "start.json")
    args = parser.parse_args()
    if not args.index.is_dir():
        raise SystemExit(f"no index at {args.index}: run `supportbot kb ingest` first")
    runs = []
    for _ in range(args.rounds):
        for mode in args.modes:
            runs.append(one_start(args.index, args.models_dir, mode))
            print(json.dumps(runs[-1]), flush=True)
    summary: dict[str, Any] = {}
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            "ready_s_median": round(statistics.median(r["ready_s"] for r in mine), 2),
            "server_rss_mb_median": round(statistics.median(r["server_rss_mb"] for r in mine), 1),
        }
    base = args.modes[-1]
    for mode in args.modes[:-1]:
        summary[mode]["ready_ratio_to_" + base] = round(summary[mode]["ready_s_median"] / summary[base]["ready_s_median"], 3)
        summary[mode]["rss_ratio_to_" + base] = round(
            summary[mode]["server_rss_mb_median"] / summary[base]["server_rss_mb_median"], 3
        )
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
