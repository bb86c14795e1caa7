"""The chat server under many websocket conversations: capacity, frames/s, overhead per message.

Starts the real server (`supportbot serve`, its own embedded Redis, the bundled model) on a
free port with a scratch data directory, then, from this process:

1. idle capacity: opens `--idle` connections (default 1,000), each with a started
   conversation, holds them, and reads the server's RSS and its Redis's before and after;
2. frames/s: `--conversations` connections (default 100) ping-pong as fast as they can for
   `--seconds`; the baseline in the same run is one connection doing the same;
3. overhead: the same connections each send one question, all at once and then spread
   over `--spread` seconds (visitors do not type in lockstep); the server reports per
   answer `server_overhead_s` = receive -> first token frame, minus the assistant's own time
   to first token (retrieval, generation, grounding), i.e. parsing, Redis state, the lock,
   history, event log, fan-out. Also the client-side round trip of the `user_message` echo.

    .venv/bin/python bench/server.py [--idle 1000] [--conversations 100] [--seconds 5] [--workers 1]

With `--workers N` the server runs N processes on its port (`serve --workers N`); RSS is
then the supervisor's plus every worker's.

Rate limits are raised for the run (they are per client address and every connection
here shares one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def server_rss_mb(pid: int, redis: int | None) -> float:
    """The server process and its workers (`--workers`), not its Redis."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(p.memory_info().rss for p in tree if p.pid != redis) / 2**20


def redis_pid(data_dir: Path) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "redis-server" in cmdline and str(data_dir / "redis") in cmdline:
            return int(proc.name)
    return None


def start_server(
    data_dir: Path,
    models_dir: Path,
    cpus: str = "",
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
    ready_within_s: float = 300,
) -> tuple[subprocess.Popen[bytes], str]:
    """`supportbot serve` on `port` (default: a free one), its log appended to DATA_DIR/server.log."""
    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SUPPORTBOT_DATA_DIR": str(data_dir),
        "SUPPORTBOT_MODEL_CACHE_DIR": str(models_dir),
        "SUPPORTBOT_GENERATOR_MAX_NEW_TOKENS": "16",
        "SUPPORTBOT_RATE_FRAMES_PER_S": "100000",
        "SUPPORTBOT_RATE_BURST": "100000",
        "SUPPORTBOT_RATE_CLIENT_FRAMES_PER_S": "1000000",
        "SUPPORTBOT_RATE_CLIENT_BURST": "1000000",
        "SUPPORTBOT_CONVERSATIONS_PER_CLIENT_PER_HOUR": "100000",
        **(extra_env or {}),
    }
    log_path = data_dir / "server.log"
    already = log_path.read_text(errors="replace").count("Application startup complete.") if log_path.exists() else 0
    log = log_path.open("a")
    pinned = {int(c) for c in cpus.split(",")} if cpus else None
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, pinned)) if pinned else None,  # type: ignore[arg-type]
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            started = log_path.read_text(errors="replace").count("Application startup complete.") - already
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200 and started >= workers:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("server did not become ready")


async def connect(url: str) -> Any:
    ws = await websockets.connect(url, max_size=None, open_timeout=60)
    await ws.send(json.dumps({"type": "start"}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws


async def idle_capacity(url: str, count: int, server_pid: int, data_dir: Path) -> dict[str, Any]:
    rpid = redis_pid(data_dir)
    before = server_rss_mb(server_pid, rpid), rss_mb(rpid) if rpid else 0.0
    started = time.perf_counter()
    sockets: list[Any] = []
    for chunk in range(0, count, 100):  # in waves, as visitors arrive
        sockets += await asyncio.gather(*(connect(url) for _ in range(min(100, count - chunk))))
    opened_s = time.perf_counter() - started
    await asyncio.sleep(2)
    after = server_rss_mb(server_pid, rpid), rss_mb(rpid) if rpid else 0.0
    pongs = 0
    for ws in sockets:  # every one of them still answers
        await ws.send(json.dumps({"type": "ping"}))
    for ws in sockets:
        pongs += json.loads(await ws.recv())["type"] == "pong"
    await asyncio.gather(*(ws.close() for ws in sockets))
    return {
        "connections": count,
        "all_answer_ping": pongs == count,
        "open_rate_per_s": count / opened_s,
        "server_rss_mb_before": before[0],
        "server_rss_mb_held": after[0],
        "server_rss_mb_per_1000": (after[0] - before[0]) / count * 1000,
        "redis_rss_mb_held": after[1],
    }


async def frames_per_second(url: str, connections: int, seconds: float) -> float:
    sockets = await asyncio.gather(*(connect(url) for _ in range(connections)))
    stop = time.perf_counter() + seconds
    counts = [0] * connections

    async def pinger(i: int, ws: Any) -> None:
        while time.perf_counter() < stop:
            await ws.send('{"type":"ping"}')
            await ws.recv()
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(pinger(i, ws) for i, ws in enumerate(sockets)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(ws.close() for ws in sockets))
    return sum(counts) / elapsed


async def overhead(url: str, conversations: int, question: str, spread_s: float) -> dict[str, Any]:
    """Every conversation asks once: all at the same instant (spread 0) or at uniform random
    times over `spread_s` seconds, as visitors do."""
    sockets = await asyncio.gather(*(connect(url) for _ in range(conversations)))
    rng = random.Random(0)
    delays = [rng.uniform(0, spread_s) for _ in sockets]

    first_token: list[float] = []  # what the visitor waits for: send to the first answer text
    answered: list[float] = []  # send to `done`

    async def ask(i: int, ws: Any) -> tuple[float, dict[str, Any]]:
        await asyncio.sleep(delays[i])
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "message", "client_message_id": "q", "text": question}))
        echo_s = None
        first_s = None
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "user_message" and echo_s is None:
                echo_s = time.perf_counter() - sent
            if frame["type"] == "token" and first_s is None:
                first_s = time.perf_counter() - sent
            if frame["type"] == "done":
                answered.append(time.perf_counter() - sent)
                first_token.append(first_s if first_s is not None else answered[-1])
                return echo_s or 0.0, frame
            if frame["type"] == "error":
                raise RuntimeError(frame)

    started = time.perf_counter()
    results = await asyncio.gather(*(ask(i, ws) for i, ws in enumerate(sockets)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(ws.close() for ws in sockets))
    overheads = [f["timings"]["server_overhead_s"] for _, f in results if f["timings"].get("server_overhead_s") is not None]
    echoes = [e for e, _ in results]
    paths: dict[str, int] = {}
    for _, frame in results:
        paths[frame["path"]] = paths.get(frame["path"], 0) + 1
    return {
        "conversations": conversations,
        "spread_s": spread_s,
        "all_answered_s": elapsed,
        "paths": paths,
        "server_overhead_p50_ms": statistics.median(overheads) * 1000,
        "server_overhead_p99_ms": percentile(overheads, 0.99) * 1000,
        "user_message_echo_p50_ms": statistics.median(echoes) * 1000,
        "user_message_echo_p99_ms": percentile(echoes, 0.99) * 1000,
        "first_token_p50_s": statistics.median(first_token),
        "first_token_p99_s": percentile(first_token, 0.99),
        "answer_p50_s": statistics.median(answered),
        "answer_p99_s": percentile(answered, 0.99),
    }


def loop_lag(base: str) -> dict[str, float]:
    """The server's `supportbot_event_loop_lag_seconds` histogram from /metrics: cumulative
    bucket counts by upper bound, and `count` and `sum` (all workers together)."""
    found: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("supportbot_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            found[bound] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(("supportbot_event_loop_lag_seconds_count", "supportbot_event_loop_lag_seconds_sum")):
            found[line.split(" ", 1)[0].rsplit("_", 1)[1]] = float(line.rsplit(" ", 1)[1])
    return found


def lag_between(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """How late the loop woke its 50 ms timer between two readings: the mean, and the bucket
    bounds that 99% and all of the wake-ups fell within (what every frame waited on top)."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return {"wakeups": 0}
    bounds = sorted((float(b), after[b] - before.get(b, 0.0)) for b in after if b not in ("count", "sum"))

    def within(share: float) -> float | None:
        return next((b * 1000 for b, n in bounds if n >= share * count), None)

    return {
        "wakeups": int(count),
        "mean_ms": round((after["sum"] - before.get("sum", 0.0)) / count * 1000, 3),
        "p99_within_ms": within(0.99),
        "max_within_ms": within(1.0),
    }


async def one_conversation(url: str, question: str, asks: int) -> dict[str, Any]:
    """The baseline: one conversation alone asks `asks` times, one after another."""
    ws = await connect(url)
    overheads = []
    for i in range(asks):
        await ws.send(json.dumps({"type": "message", "client_message_id": f"b{i}", "text": question}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "done":
                overheads.append(frame["timings"]["server_overhead_s"])
                break
            if frame["type"] == "error":
                raise RuntimeError(frame)
        await asyncio.sleep(0.2)
    await ws.close()
    return {
        "asks": asks,
        "server_overhead_p50_ms": statistics.median(overheads) * 1000,
        "server_overhead_p99_ms": percentile(overheads, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--spread", type=float, nargs="+", default=[0.0, 20.0], help="seconds over which the questions arrive (0: all at once)"
    )
    parser.add_argument(
        "--question",
        action="append",
        help="asked by every conversation in the overhead phase, once per --question "
        "(default: one the help center cannot answer, so no generation, then one it can)",
    )
    parser.add_argument("--index", type=Path, default=REPO / "data" / "index")
    parser.add_argument("--models-dir", type=Path, default=REPO / "data" / "models")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "server.json")
    parser.add_argument("--baseline-asks", type=int, default=30, help="questions asked by one conversation alone (baseline)")
    parser.add_argument("--server-cpus", type=str, default="", help="pin the server (and its Redis) to these CPUs, e.g. 0")
    parser.add_argument("--client-cpus", type=str, default="", help="pin this client process to these CPUs, e.g. 1")
    parser.add_argument("--workers", type=int, default=1, help="server processes on the port (`serve --workers`)")
    args = parser.parse_args()
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})

    data_dir = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    if args.index.exists():
        shutil.copytree(args.index, data_dir / "index")
    process, base = start_server(data_dir, args.models_dir, args.server_cpus, args.workers)
    url = base.replace("http", "ws") + "/v1/chat"
    report: dict[str, Any] = {
        "cores": os.cpu_count(),
        "server_cpus": args.server_cpus,
        "client_cpus": args.client_cpus,
        "workers": args.workers,
    }
    try:
        if args.idle:
            report["idle"] = asyncio.run(idle_capacity(url, args.idle, process.pid, data_dir))
            print(json.dumps({"idle": report["idle"]}), flush=True)
        if args.seconds:
            one = asyncio.run(frames_per_second(url, 1, args.seconds))
            many = asyncio.run(frames_per_second(url, args.conversations, args.seconds))
            report["frames"] = {"one_connection_per_s": one, f"{args.conversations}_connections_per_s": many, "ratio": many / one}
            print(json.dumps({"frames": report["frames"]}), flush=True)
        questions = args.question or ["What is the capital of Peru?", "How do I descale my kettle?"]
        report["overhead"] = []
        for question in questions:
            lag = loop_lag(base)
            baseline = asyncio.run(one_conversation(url, question, args.baseline_asks))
            baseline["loop_lag"] = lag_between(lag, lag := loop_lag(base))
            for spread in args.spread:
                row = {"question": question, **asyncio.run(overhead(url, args.conversations, question, spread))}
                row["loop_lag"] = lag_between(lag, lag := loop_lag(base))
                row["baseline_one_conversation"] = baseline
                row["p99_ratio_to_baseline"] = row["server_overhead_p99_ms"] / baseline["server_overhead_p99_ms"]
                report["overhead"].append(row)
                print(json.dumps({"overhead": row}), flush=True)
    finally:
        process.terminate()
        process.wait(60)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / "server.log", args.out.with_suffix(".log"))  # kept for a look after a failure
        shutil.rmtree(data_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
