"""Faults under load: does anything a client was told was stored go missing?

Starts `supportbot serve --workers 2` with its embedded Redis on a scratch data directory,
then runs `--conversations` visitors that behave as the widget does: ask, wait for the
answer, rate it (with an `event_id`, so a resend is idempotent), and on a dropped socket
reconnect, resume from the last sequence number they saw and resend what was not
acknowledged (the same `client_message_id`). An agent takes some conversations over,
writes to the visitor and hands them back. Meanwhile, on a schedule, the script injects:

- `worker`: SIGKILL of one worker (the supervisor replaces it);
- `redis`: SIGKILL of the embedded Redis (the supervisor restarts it from its append-only file);
- `supervisor`: SIGKILL of the supervisor (its workers and Redis must die with it; the script
  starts the service again on the same port and data directory);
- `sigterm`: SIGTERM of the service with answers in flight (they drain; then a restart);
- `slow_generator` / `failing_generator`: for 12 s the generator streams one word a second /
  answers 500. Planning either runs the service in generative mode against
  bench/fake_generator.py, an OpenAI-compatible endpoint (the `openai` backend), instead of
  the composer alone.

Afterwards it reads what was stored (each conversation's history over the websocket, the
feedback sink files) and compares it with the clients' own records:

- answers, user messages and agent messages acknowledged vs stored, ratings acknowledged
  vs present in the sink files (each must be there exactly once);
- messages answered twice, conversations whose frames had sequence gaps;
- answers stored `cancelled` (the visitors never send `cancel`: each is an answer the
  visitor saw cut off), each with when it was stored and the fault just before it;
- per fault, the time from the fault to the next good answer any client received;
- error frames by code, reconnects.

    .venv/bin/python -m bench.chaos [--conversations 100] [--duration 90] [--faults worker,redis,supervisor,sigterm]
    .venv/bin/python -m bench.chaos --soak 1800 --conversations 50   # no faults: memory, fds, Redis at start and end

A full disk under the feedback sink is tested with an injected ENOSPC in
tests/bot/test_feedback.py, not here. Without generator faults the visitors' questions are
answered by the composer (answer mode auto).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets

from bench import fake_generator
from bench.server import REPO, percentile, redis_pid, start_server

QUESTIONS = [
    "How do I descale my kettle?",
    "How long is the password reset link valid?",
    "Do you ship to Canada?",
    "How do I return an item?",
    "What does error E-1042 mean?",
    "What is the capital of Peru?",  # not in the help center: not sure
]
GOOD_PATHS = {"composed", "generated", "fallback", "not_sure", "busy"}  # not cancelled or error
FAULTS = ("worker", "redis", "supervisor", "sigterm", "slow_generator", "failing_generator")
GENERATOR_FAULTS = {"slow_generator": "slow", "failing_generator": "failing"}
GENERATOR_FAULT_S = 12.0  # how long the generator stays slow or failing
# The report's `stored` figures that must be 0 for the run to pass (tests/e2e/test_chaos.py asserts the same).
MUST_BE_ZERO = (
    "answers_lost",
    "user_messages_lost",
    "messages_answered_twice",
    "ratings_missing_from_sink",
    "ratings_in_sink_more_than_once",
    "agent_messages_lost",
    "frames_sent_twice",
    "conversations_with_gaps",
    "answers_cancelled_unasked",
)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(process: psutil.Process) -> str:
    """A process's command line; empty once it has exited (a zombie waiting for its parent to reap it included)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:  # ZombieProcess is one
        return ""


def _describe(process: psutil.Process) -> dict[str, Any]:
    try:
        return {"pid": process.pid, "cmdline": " ".join(process.cmdline())[:200], "status": process.status()}
    except psutil.NoSuchProcess:
        return {"pid": process.pid, "gone": True}


class Service:
    """The server under test: started, killed and started again on one port and data directory."""

    def __init__(self, data_dir: Path, models_dir: Path, workers: int, env: dict[str, str]) -> None:
        self.data_dir, self.models_dir, self.workers, self.env = data_dir, models_dir, workers, env
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.port: int | None = None

    def start(self) -> float:
        began = time.monotonic()
        self.process, self.base = start_server(
            self.data_dir, self.models_dir, workers=self.workers, extra_env=self.env, port=self.port, ready_within_s=360
        )
        self.port = int(self.base.rsplit(":", 1)[1])
        return time.monotonic() - began

    def tree(self) -> list[psutil.Process]:
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.tree()[1:] if "spawn_main" in _cmdline(p)]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Record:
    """What one visitor was told: the client's side of the comparison."""

    conversation_id: str = ""
    last_seq: int = 0
    seqs: list[int] = field(default_factory=list)
    gaps: int = 0
    answers: dict[str, str] = field(default_factory=dict)  # client_message_id -> answer id (its done seen)
    paths: collections.Counter[str] = field(default_factory=collections.Counter)
    user_messages: set[str] = field(default_factory=set)  # client_message_ids echoed back (stored)
    ratings: set[str] = field(default_factory=set)  # event ids acknowledged with `rated`
    agent_messages: set[str] = field(default_factory=set)  # agent message ids acknowledged (201)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    reconnects: int = 0


class Visitor:
    def __init__(self, run: Run, index: int) -> None:
        self.run, self.index = run, index
        self.record = Record()
        self.ws: Any = None
        self.lock = asyncio.Lock()  # the agent writes between the visitor's turns
        self.turn = 0
        self.drops: list[float] = []  # when this visitor's socket failed
        self.good: list[float] = []  # when it got a good answer
        # What happened during the current request (reset by each): kept for a turn that fails.
        self.trace: list[list[Any]] = []
        self.resent_at: float | None = None  # a message resent after a drop, until its answer's first text
        self.resumes: list[tuple[float, float]] = []  # (resent at, seconds to the first text after it)
        self.ready_seq = 0  # the conversation's last seq when the current socket started
        self._tokens_noted: set[Any] = set()

    def note(self, kind: str, *detail: Any) -> None:
        self.trace.append([round(time.monotonic() - self.run.started, 2), kind, *detail])

    @property
    def url(self) -> str:
        return self.run.service.base.replace("http", "ws") + "/v1/chat"

    async def connect(self) -> None:
        """Open a socket and start (or resume) the conversation, retrying until the service is back."""
        delay = 0.1
        while True:
            try:
                self.ws = await websockets.connect(self.url, open_timeout=10, max_size=None)
                start: dict[str, Any] = {"type": "start"}
                if self.record.conversation_id:
                    start |= {"conversation_id": self.record.conversation_id, "last_seq": self.record.last_seq}
                await self.ws.send(json.dumps(start))
                ready = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                if ready.get("type") == "ready":
                    self.record.conversation_id = ready["conversation_id"]
                    self.ready_seq = ready["last_seq"]
                    self.note("ready", {"resume_from": self.record.last_seq, "server_last_seq": ready["last_seq"]})
                    self.note("status", ready["status"])
                    return
                self.record.errors[ready.get("code", ready.get("type", "?"))] += 1
                self.note("connect", ready.get("code", ready.get("type", "?")))
            except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
                self.note("connect", type(exc).__name__)
            await self.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            with contextlib.suppress(OSError, TimeoutError, websockets.ConnectionClosed):
                await asyncio.wait_for(ws.close(), 2)

    def _sequenced(self, frame: dict[str, Any]) -> None:
        seq = frame.get("seq")
        # Written after this socket's `ready`: not the stream's catch-up of what the dead worker wrote.
        if frame["type"] == "token" and self.resent_at is not None and (seq or 0) > self.ready_seq:
            self.resumes.append((self.resent_at, time.monotonic() - self.resent_at))
            self.resent_at = None
        if frame["type"] != "token" or seq is None or frame.get("message_id") not in self._tokens_noted:
            self.note(
                "frame", {k: frame[k] for k in ("type", "seq", "message_id", "client_message_id", "code", "path") if k in frame}
            )
            if frame["type"] == "token":
                self._tokens_noted.add(frame.get("message_id"))  # the first token of each answer, not every one
        if seq is None:
            return
        if seq <= self.record.last_seq:
            self.run.duplicates_frames += 1  # sent twice: resume must send each frame once
            return
        if seq != self.record.last_seq + 1:
            self.record.gaps += 1
        self.record.last_seq = seq
        self.record.seqs.append(seq)
        if frame["type"] == "user_message":
            self.record.user_messages.add(frame.get("client_message_id", ""))
        elif frame["type"] == "agent_message":
            self.run.agent_seen.add(frame["message_id"])

    async def request(self, frame: dict[str, Any], finished: Any, timeout_s: float = 240) -> dict[str, Any]:
        """Send `frame` until `finished(frame)` returns a frame, reconnecting and resending as the widget does."""
        deadline = time.monotonic() + timeout_s
        self.trace, self._tokens_noted = [], set()
        sent = False
        while time.monotonic() < deadline:
            if self.ws is None:
                await self.connect()
                self.record.reconnects += 1
            try:
                self.note("send", {k: frame[k] for k in ("type", "client_message_id", "event_id") if k in frame})
                if frame["type"] == "message" and sent:
                    self.resent_at = time.monotonic()
                sent = True
                await self.ws.send(json.dumps(frame))
                while True:
                    reply = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
                    self._sequenced(reply)
                    if reply["type"] == "error":
                        self.record.errors[reply["code"]] += 1
                        if reply["code"] in ("busy", "unavailable", "rate_limited"):
                            await asyncio.sleep(max(0.3, float(reply.get("retry_after_s", 0))))
                            break  # send it again
                        raise RuntimeError(f"error frame {reply}")
                    done = finished(reply)
                    if done is not None:
                        return dict(done)
            except (OSError, TimeoutError, websockets.ConnectionClosed) as exc:
                self.note("drop", type(exc).__name__)
                self.drops.append(time.monotonic())
                await self.close()
        raise TimeoutError(f"no reply to {frame['type']} within {timeout_s:g} s")

    async def ask(self) -> None:
        cmid = f"v{self.index}-{self.turn}"
        self.turn += 1
        text = random.choice(QUESTIONS)
        answer_id: list[str] = []
        after_user: list[bool] = []

        sent = time.monotonic()
        first_text: list[float] = []

        def finished(frame: dict[str, Any]) -> dict[str, Any] | None:
            if frame["type"] == "token" and (after_user or answer_id) and not first_text:
                first_text.append(time.monotonic())
            if frame["type"] == "user_message" and frame.get("client_message_id") == cmid:
                after_user.append(True)
            elif frame["type"] == "duplicate" and frame["client_message_id"] == cmid:
                answer_id.append(frame["message_id"])
                seen = self.run.done_frames.get(frame["message_id"])
                return seen  # its done came before the drop: the turn is over
            elif frame["type"] == "done" and (after_user or frame["message_id"] in answer_id):
                self.run.done_frames[frame["message_id"]] = frame
                return frame
            return None

        done = await self.request({"type": "message", "client_message_id": cmid, "text": text}, finished)
        if first_text:
            self.run.first_text.append((sent, first_text[0] - sent, done["path"]))
        self.record.answers[cmid] = done["message_id"]
        self.record.paths[done["path"]] += 1
        if done["path"] in GOOD_PATHS:
            self.run.good_answers.append(time.monotonic())
            self.good.append(time.monotonic())
        if done["path"] in ("cancelled", "error"):
            return
        event_id = f"r-{cmid}"
        rate = {"type": "rate", "message_id": done["message_id"], "rating": random.choice(("up", "down")), "event_id": event_id}
        rated = await self.request(rate, lambda f: f if f["type"] == "rated" and f.get("event_id") == event_id else None)
        self.record.ratings.add(rated["event_id"])

    async def chat(self, until: float) -> None:
        while time.monotonic() < until:
            async with self.lock:
                try:
                    await self.ask()
                except (TimeoutError, RuntimeError) as exc:
                    self.run.failures.append(
                        {
                            "conversation_id": self.record.conversation_id,
                            "client_message_id": f"v{self.index}-{self.turn - 1}",
                            "error": str(exc),
                            "trace": self.trace,
                        }
                    )
            await asyncio.sleep(random.uniform(0.2, 1.0) * self.run.think_s)
        await self.close()


class Run:
    def __init__(self, service: Service, think_s: float) -> None:
        self.service = service
        self.think_s = think_s
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.done_frames: dict[str, dict[str, Any]] = {}
        self.good_answers: list[float] = []
        self.failures: list[dict[str, Any]] = []
        self.duplicates_frames = 0
        self.agent_seen: set[str] = set()
        self.agent_sent: set[str] = set()
        self.faults: list[dict[str, Any]] = []
        self.pending_faults: list[tuple[dict[str, Any], float]] = []
        self.fault_clock: list[tuple[dict[str, Any], float]] = []  # each fault's wall-clock time, for the server log
        self.back_clock: dict[int, float] = {}  # id of a restart fault's entry -> wall-clock time the service was up again
        self.first_text: list[tuple[float, float, str]] = []  # (asked at, seconds to first text, path)
        self.generator: Any = None  # bench/fake_generator.py, when generator faults are planned

    async def agent(self, visitors: list[Visitor], key: str, until: float) -> None:
        """Takes a conversation over between the visitor's turns, writes to it, hands it back."""
        headers = {"Authorization": f"Bearer {key}"}
        while time.monotonic() < until:
            await asyncio.sleep(2)
            visitor = random.choice(visitors)
            if not visitor.record.conversation_id:
                continue
            async with visitor.lock:
                cid = visitor.record.conversation_id
                try:
                    async with httpx.AsyncClient(base_url=self.service.base, headers=headers, timeout=10) as http:
                        took = await http.post(f"/v1/agent/conversations/{cid}/takeover")
                        if took.status_code == 200:
                            sent = await http.post(f"/v1/agent/conversations/{cid}/messages", json={"text": "Hello from Alice"})
                            if sent.status_code == 201:
                                self.agent_sent.add(sent.json()["message_id"])
                except httpx.HTTPError:
                    pass  # the service is down for a fault: nothing was acknowledged
                # Always, and until it is done: a takeover whose reply a fault cut off (or a
                # handback that failed) left the conversation with the agent, and the bot would
                # stay silent to the visitor's next turns (a bench bug that looked like lost turns).
                await self.hand_back(headers, cid)

    async def hand_back(self, headers: dict[str, str], cid: str) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                async with httpx.AsyncClient(base_url=self.service.base, headers=headers, timeout=10) as http:
                    if (await http.post(f"/v1/agent/conversations/{cid}/handback")).status_code < 500:
                        return  # handed back, or it was never taken
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        self.failures.append(
            {"conversation_id": cid, "client_message_id": "", "error": "the agent could not hand back", "trace": []}
        )

    async def inject(self, fault: str) -> None:
        service = self.service
        began = time.monotonic()
        entry: dict[str, Any] = {"fault": fault, "at_s": round(began - self.started, 1)}
        self.fault_clock.append((entry, time.time()))
        if fault in GENERATOR_FAULTS:
            self.generator.mode = GENERATOR_FAULTS[fault]
            await asyncio.sleep(GENERATOR_FAULT_S)
            self.generator.mode = "ok"
            window = [(t, s, p) for t, s, p in self.first_text if began <= t < began + GENERATOR_FAULT_S]
            entry["answers_during"] = len(window)
            entry["paths_during"] = dict(collections.Counter(p for _, _, p in window))
            if window:
                entry["first_text_p50_during_s"] = round(percentile([s for _, s, _ in window], 0.5), 3)
                entry["first_text_max_during_s"] = round(max(s for _, s, _ in window), 3)
        elif fault == "worker":
            os.kill(random.choice(service.worker_pids()), signal.SIGKILL)
        elif fault == "redis":
            pid = redis_pid(service.data_dir)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        elif fault in ("supervisor", "sigterm"):
            assert service.process is not None
            tree = service.tree()
            service.process.send_signal(signal.SIGKILL if fault == "supervisor" else signal.SIGTERM)
            await asyncio.to_thread(service.process.wait, 90)
            gone_by = time.monotonic() + 30
            while alive := [p for p in tree[1:] if _alive(p)]:
                if time.monotonic() > gone_by:
                    entry["left_behind"] = [_describe(p) for p in alive]
                    for p in alive:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            p.kill()
                    break
                await asyncio.sleep(0.1)
            entry["down_s"] = round(time.monotonic() - began, 2)
            entry["restart_s"] = round(await asyncio.to_thread(service.start), 2)
            self.back_clock[id(entry)] = time.time()
        # From the fault to the first good answer that the service gave after it (an answer
        # acknowledged in the moment of a kill does not count: it was written before).
        since = time.monotonic() if fault in ("supervisor", "sigterm") else began
        while not self.good_answers or self.good_answers[-1] < since:
            await asyncio.sleep(0.02)
            if time.monotonic() - since > 120:
                break
        after = [t for t in self.good_answers if t >= since]
        entry["to_next_good_answer_s"] = round(after[0] - began, 3) if after else None
        self.pending_faults.append((entry, began))
        print(json.dumps({"fault_injected": entry}), flush=True)

    def recoveries(self, visitors: list[Visitor]) -> None:
        """Per fault: the visitors whose socket it broke, and how long until each had an answer again."""
        for entry, began in self.pending_faults:
            waits = []
            for visitor in visitors:
                if any(began <= t < began + 5 for t in visitor.drops):
                    later = [t for t in visitor.good if t >= began]
                    waits.append(later[0] - began if later else float("inf"))
            entry["visitors_dropped"] = len(waits)
            entry["dropped_visitor_recovery_p50_s"] = round(percentile(waits, 0.5), 3) if waits else None
            entry["dropped_visitor_recovery_max_s"] = round(max(waits), 3) if waits else None
            if entry["fault"] == "worker":
                self._reanswered(entry)
                # The part the lock decides: from a dropped visitor's resend to the first text of its answer.
                resumes = [s for v in visitors for t, s in v.resumes if began <= t < began + 10]
                entry["resend_to_text_p50_s"] = round(percentile(resumes, 0.5), 3) if resumes else None
                entry["resend_to_text_max_s"] = round(max(resumes), 3) if resumes else None
            self.faults.append(entry)
            print(json.dumps({"fault": entry}), flush=True)

    def _reanswered(self, entry: dict[str, Any]) -> None:
        """From the server log: how long after the kill each message the dead worker was
        answering began to be answered again on a live one (its resend reclaimed the turn)."""
        at = next(clock for e, clock in self.fault_clock if e is entry)
        # Up to the next fault: a Redis kill 18 s later makes resends of its own.
        window = min([30.0, *(clock - at for _, clock in self.fault_clock if clock > at)])
        log_path = self.service.data_dir / "server.log"
        delays = []
        for line in log_path.read_text(errors="replace").splitlines():
            if "answer was never stored" not in line or not line.startswith("{"):
                continue
            logged = json.loads(line)
            when = datetime.datetime.fromisoformat(logged["time"].replace("Z", "+00:00")).timestamp() - at
            if 0 <= when < window:
                delays.append(when)
        entry["reanswered"] = len(delays)
        entry["reanswered_after_p50_s"] = round(percentile(delays, 0.5), 3) if delays else None
        entry["reanswered_after_max_s"] = round(max(delays), 3) if delays else None

    async def main(self, conversations: int, duration_s: float, faults: list[str], key: str) -> list[Visitor]:
        self.started = time.monotonic()
        self.started_wall = time.time()
        until = self.started + duration_s
        visitors = [Visitor(self, i) for i in range(conversations)]
        tasks = [asyncio.create_task(v.chat(until)) for v in visitors]
        tasks.append(asyncio.create_task(self.agent(visitors, key, until)))
        if faults:
            gap = duration_s / (len(faults) + 1)
            for n, fault in enumerate(faults, 1):
                await asyncio.sleep(max(0.0, self.started + n * gap - time.monotonic()))
                await self.inject(fault)
        await asyncio.gather(*tasks)
        self.recoveries(visitors)
        return visitors


async def stored_history(base: str, conversation_id: str) -> list[dict[str, Any]]:
    async with websockets.connect(base.replace("http", "ws") + "/v1/chat", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "conversation_id": conversation_id}))
        ready = json.loads(await ws.recv())
        return list(ready["history"])


async def stored_events(base: str, conversation_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The conversation's `ready` frame and its whole event stream, replayed from seq 0."""
    async with websockets.connect(base.replace("http", "ws") + "/v1/chat", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "conversation_id": conversation_id, "last_seq": 0}))
        ready = json.loads(await ws.recv())
        events: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            while not events or events[-1].get("seq", 0) < ready["last_seq"]:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        return ready, events


async def diagnose(base: str, failure: dict[str, Any]) -> dict[str, Any]:
    """For a turn that got no answer: what the service stored for it, against what the client saw."""
    ready, events = await stored_events(base, failure["conversation_id"])
    cmid = failure["client_message_id"]
    history = ready["history"]
    asked = [n for n, m in enumerate(history) if m["role"] == "user" and m.get("client_message_id") == cmid]
    found: dict[str, Any] = {"status": ready["status"], "user_message_stored": bool(asked)}
    if asked:
        after = history[asked[-1] + 1 :]
        answer = next((m for m in after if m["role"] == "assistant"), None)
        found["answer_stored"] = answer is not None
        if answer is not None:
            found["answer_path"] = answer.get("path")
            found["done_in_stream"] = any(e.get("type") == "done" and e.get("message_id") == answer["id"] for e in events)
        found["next_roles"] = [m["role"] for m in after[:3]]
    return found


def sink_event_ids(data_dir: Path) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for path in (data_dir / "feedback").glob("feedback-*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                found[json.loads(line)["event_id"]] += 1
    return found


def cancelled_detail(
    run: Run, conversation_id: str, history: list[dict[str, Any]], acknowledged: dict[str, str]
) -> list[dict[str, Any]]:
    """Each answer stored with path `cancelled` (the bench never asks for one): when it was
    stored, against the fault just before it, and whether the visitor took it as its answer."""
    seen = set(acknowledged.values())
    out = []
    asked = ""
    for message in history:
        if message["role"] == "user":
            asked = message.get("client_message_id", "")
        if message["role"] != "assistant" or message.get("path") != "cancelled":
            continue
        created = float(message.get("created") or 0)
        before = [(entry, clock) for entry, clock in run.fault_clock if clock <= created]
        entry, clock = before[-1] if before else ({}, 0.0)
        back = run.back_clock.get(id(entry))
        out.append(
            {
                "conversation_id": conversation_id,
                "message_id": message["id"],
                "client_message_id": asked,
                "at_s": round(created - run.started_wall, 2),
                "after_fault": entry.get("fault"),
                "s_after_fault": round(created - clock, 2) if before else None,
                # For a SIGTERM or a supervisor kill: stored before the service was up again (by the old one).
                "before_restart": back is None or created < back if entry.get("fault") in ("sigterm", "supervisor") else None,
                "visitor_took_it": message["id"] in seen,
                "chars": len(message.get("text", "")),
            }
        )
    return out


async def compare(run: Run, visitors: list[Visitor]) -> dict[str, Any]:
    service = run.service
    acked_answers = lost_answers = answered_twice = lost_user = 0
    doubles: list[dict[str, Any]] = []
    cancelled: list[dict[str, Any]] = []
    stored_agent: set[str] = set()
    for visitor in visitors:
        record = visitor.record
        if not record.conversation_id:
            continue
        history = await stored_history(service.base, record.conversation_id)
        stored_ids = {m["id"] for m in history}
        per_cmid = collections.Counter(m.get("client_message_id") for m in history if m["role"] == "user")
        answered_twice += sum(count - 1 for count in per_cmid.values() if count > 1)
        stored_agent |= {m["id"] for m in history if m["role"] == "agent"}
        for answer_id in record.answers.values():
            acked_answers += 1
            lost_answers += answer_id not in stored_ids
        lost_user += sum(1 for cmid in record.user_messages if cmid and per_cmid[cmid] == 0)
        # The bench never sends `cancel`: an answer stored as cancelled is one the visitor saw cut off.
        cancelled.extend(cancelled_detail(run, record.conversation_id, history, record.answers))
        # Two bot answers between one user message and the next: answered twice.
        turns = [m for m in history if m["role"] in ("user", "assistant")]
        twice = sum(1 for a, b in itertools.pairwise(turns) if a["role"] == b["role"] == "assistant")
        answered_twice += twice
        if twice or any(count > 1 for count in per_cmid.values()):
            # What was stored, so a double answer can be traced (ids, paths, times; no text).
            doubles.append(
                {
                    "conversation_id": record.conversation_id,
                    "stored": [{k: m.get(k) for k in ("id", "role", "client_message_id", "path", "created")} for m in turns],
                    "trace": visitor.trace[-40:],
                }
            )
    acked_ratings = set().union(*(v.record.ratings for v in visitors))
    # The sink copies the feedback stream to its files in the background; what a killed worker's
    # sink had read but not written is claimed by another worker's after 60 s idle
    # (bot/feedback/sink.py, claim_idle_s), so a run that ends soon after a worker kill waits for it.
    deadline = time.monotonic() + 90
    found = sink_event_ids(service.data_dir)
    while not acked_ratings <= set(found) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        found = sink_event_ids(service.data_dir)
    errors: collections.Counter[str] = collections.Counter()
    paths: collections.Counter[str] = collections.Counter()
    for visitor in visitors:
        errors.update(visitor.record.errors)
        paths.update(visitor.record.paths)
    return {
        "answers_acknowledged": acked_answers,
        "answers_lost": lost_answers,
        "user_messages_acknowledged": sum(len(v.record.user_messages) for v in visitors),
        "user_messages_lost": lost_user,
        "messages_answered_twice": answered_twice,
        "answered_twice_detail": doubles,
        "ratings_acknowledged": len(acked_ratings),
        "ratings_missing_from_sink": len(acked_ratings - set(found)),
        "ratings_in_sink_more_than_once": sum(1 for e in acked_ratings if found[e] > 1),
        "agent_messages_acknowledged": len(run.agent_sent),
        "agent_messages_lost": len(run.agent_sent - stored_agent),
        "frames_sent_twice": run.duplicates_frames,
        "conversations_with_gaps": sum(1 for v in visitors if v.record.gaps),
        "answers_cancelled_unasked": len(cancelled),
        "answers_cancelled_by_fault": dict(collections.Counter(c["after_fault"] or "none" for c in cancelled)),
        "answers_cancelled_detail": sorted(cancelled, key=lambda c: c["at_s"])[:60],
        "reconnects": sum(v.record.reconnects for v in visitors),
        "errors_by_code": dict(errors),
        "paths": dict(paths),
        "client_failure_count": len(run.failures),
    }


async def diagnose_failures(run: Run) -> None:
    """Adds to each failed turn (the first 40) what the service stored for it."""
    for failure in run.failures[:40]:
        if failure["conversation_id"]:
            try:
                failure["stored"] = await diagnose(run.service.base, failure)
            except (OSError, TimeoutError, websockets.ConnectionClosed, KeyError) as exc:
                failure["stored"] = {"unreadable": repr(exc)}


def resources(service: Service) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for process in service.tree():
        if not _alive(process):  # a killed child its parent has not reaped yet: no memory, no descriptors
            out.setdefault("exited_not_yet_reaped", []).append(process.pid)
            continue
        cmdline = _cmdline(process)
        if "redis-server" in cmdline:
            name = "redis"
        elif service.process is not None and process.pid == service.process.pid:
            name = "supervisor"
        elif "spawn_main" in cmdline:
            name = f"worker-{process.pid}"
        else:
            name = f"{process.name()}-{process.pid}"  # multiprocessing's resource tracker
        try:
            out[name] = {"rss_mb": round(process.memory_info().rss / 2**20, 1), "fds": process.num_fds()}
        except psutil.NoSuchProcess:  # exited between the listing and the reading
            out.setdefault("exited_not_yet_reaped", []).append(process.pid)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of chatting (faults spread over it)")
    parser.add_argument(
        "--faults",
        default="worker,redis,supervisor,sigterm",
        help=f"comma-separated, in order; any of {', '.join(FAULTS)} (the generator faults run the service generative)",
    )
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of steady traffic with no faults; reports resources")
    parser.add_argument("--think", type=float, default=2.0, help="a visitor's pause between turns, seconds (at most)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--answer-mode", default="auto")
    parser.add_argument("--index", type=Path, default=REPO / "data" / "index")
    parser.add_argument("--models-dir", type=Path, default=REPO / "data" / "models")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chaos.json")
    args = parser.parse_args()
    random.seed(args.seed)
    faults = [] if args.soak else [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"--faults: unknown {', '.join(sorted(unknown))}; expected {', '.join(FAULTS)}")

    data_dir = Path(tempfile.mkdtemp(prefix="sb-chaos-"))
    if args.index.exists():
        shutil.copytree(args.index, data_dir / "index")
    env = {
        "SUPPORTBOT_ANSWER_MODE": args.answer_mode,
        "SUPPORTBOT_SHUTDOWN_DRAIN_S": "10",
        # Every visitor here shares one address; the per-address limits are for real sites.
        "SUPPORTBOT_FEEDBACK_PER_CLIENT_PER_MINUTE": "100000",
        "SUPPORTBOT_FEEDBACK_BURST": "100000",
    }
    generator = None
    if set(faults) & set(GENERATOR_FAULTS):
        generator = fake_generator.FakeGenerator()
        generator.start()
        env |= {
            "SUPPORTBOT_ANSWER_MODE": "generative",
            "SUPPORTBOT_GENERATOR_BACKEND": "openai",
            "SUPPORTBOT_GENERATOR_BASE_URL": generator.base_url,
            "SUPPORTBOT_GENERATOR_MAX_NEW_TOKENS": "48",
        }
    service = Service(data_dir, args.models_dir, args.workers, env)
    report: dict[str, Any] = {"conversations": args.conversations, "workers": args.workers, "faults_planned": faults}
    try:
        report["first_start_s"] = round(service.start(), 2)
        made = subprocess.run(
            [sys.executable, "-m", "server.cli", "keys", "create", "--role", "agent", "--name", "Alice"],
            env={**os.environ, "SUPPORTBOT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            check=True,
        )
        run = Run(service, args.think)
        run.generator = generator
        report["resources_start"] = resources(service)
        began = time.monotonic()
        visitors = asyncio.run(run.main(args.conversations, args.soak or args.duration, faults, made.stdout.strip()))
        report["chat_s"] = round(time.monotonic() - began, 1)
        report["resources_end"] = resources(service)
        redis_info = subprocess.run(
            [
                sys.executable,
                "-c",
                "import redis,sys; print(redis.Redis(unix_socket_path=sys.argv[1]).info('memory')['used_memory'])",
                str(data_dir / "redis" / "redis.sock"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        report["redis_used_memory_mb_end"] = round(int(redis_info.stdout or 0) / 2**20, 1)
        report["faults"] = run.faults
        recoveries = [f["dropped_visitor_recovery_max_s"] for f in run.faults if f["fault"] in ("worker", "redis")]
        report["recovery_worker_or_redis_max_s"] = max((r for r in recoveries if r is not None), default=None)
        report["answers_per_s"] = round(len(run.good_answers) / report["chat_s"], 1)
        report["good_answer_gap_p99_s"] = (
            round(percentile([b - a for a, b in itertools.pairwise(run.good_answers)], 0.99), 3)
            if len(run.good_answers) > 1
            else None
        )
        firsts = [s for _, s, _ in run.first_text]
        if firsts:
            report["first_text_p50_s"] = round(percentile(firsts, 0.5), 3)
            report["first_text_p95_s"] = round(percentile(firsts, 0.95), 3)
        report["stored"] = asyncio.run(compare(run, visitors))
        asyncio.run(diagnose_failures(run))
        # What the failed turns found stored, counted; then each (the first 40) with the client's trace.
        report["client_failures_stored"] = dict(
            collections.Counter(
                json.dumps({k: v for k, v in f.get("stored", {}).items() if k != "next_roles"}, sort_keys=True)
                for f in run.failures[:40]
            )
        )
        report["client_failures"] = run.failures[:40]
        report["ok"] = (
            all(report["stored"][k] == 0 for k in MUST_BE_ZERO)
            and not any("left_behind" in f for f in run.faults)
            and not run.failures
        )
    finally:
        service.stop()
        if generator is not None:
            generator.stop()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        shutil.copy(data_dir / "server.log", args.out.with_suffix(".log"))
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report.get("ok") else 1)


if __name__ == "__main__":
    main()
