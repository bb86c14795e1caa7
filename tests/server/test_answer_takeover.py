"""The answer lock of a worker that died is taken over at once; a live holder's never is.

A real Redis, and a real process as the holder: it subscribes to its worker channel (as a
worker's event hub does, server/events.py) and is killed with SIGKILL, so what the takeover
sees is what Redis sees when a worker dies: its connection closed by the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.websockets import WebSocketState

from bot.assistant import AnswerMode
from bot.conversations import ConversationStore, TurnStart
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever
from server.chat import ChatService, Connection, MessageFrame
from server.components import build_assistant
from server.events import EventHub
from server.limits import RateLimiter
from server.metrics import Metrics
from server.settings import Settings

HOLDER = """
import sys, redis
client = redis.Redis.from_url(sys.argv[1])
pubsub = client.pubsub()
pubsub.subscribe(sys.argv[2])
pubsub.get_message(timeout=5)  # the subscription is confirmed
print("subscribed", flush=True)
sys.stdin.read()  # until killed
"""


def start_holder(redis_url: str, channel: str) -> subprocess.Popen[str]:
    """A process subscribed to `channel`, as a worker's event hub is to its worker channel."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, channel], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "subscribed"
    return process


def end_holder(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


async def _begun(store: ConversationStore, holder: str) -> str:
    conversation = await store.create()
    user = {"id": "u_1", "role": "user", "text": "How do I descale my kettle?", "client_message_id": "q1"}
    turn = await store.begin_turn(
        conversation.id,
        client_message_id="q1",
        answer_id="m_1",
        user_message=user,
        event={"type": "user_message", "message_id": "u_1", "text": user["text"], "client_message_id": "q1"},
        lock_ttl_s=60,  # far longer than the test: only a takeover frees it
        history=12,
        holder=holder,
    )
    assert turn.outcome == "ok" and turn.lock_token.startswith(f"{holder}/")
    return conversation.id


async def _reclaim(store: ConversationStore, cid: str, holder: str, take_over: bool = True) -> TurnStart:
    return await store.reclaim_turn(cid, "q1", "m_1", lock_ttl_s=6, history=12, holder=holder, take_over=take_over)


def test_a_dead_holders_lock_is_taken_over_once_and_a_live_holders_is_not(redis_url: str, redis_prefix: str) -> None:
    dead_id = "4242-deadbeef"
    holder = start_holder(redis_url, f"{redis_prefix}worker:{dead_id}")

    async def scenario() -> tuple[TurnStart, TurnStart, float, list[TurnStart], str, TurnStart]:
        redis = Redis.from_url(redis_url)
        store = ConversationStore(redis, prefix=redis_prefix)
        # Two live workers, each with its event hub subscribed to its worker channel.
        first, second = EventHub(redis, redis_prefix), EventHub(redis, redis_prefix)
        await first.start()
        await second.start()
        try:
            while not (first.listening_for(0) and second.listening_for(0)):
                await asyncio.sleep(0.02)
            cid = await _begun(store, dead_id)
            while_alive = await _reclaim(store, cid, first.worker_id)
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            killed = time.monotonic()
            without_take_over = await _reclaim(store, cid, first.worker_id, take_over=False)
            # Two workers' resends at once: one takes it, the other finds a live holder.
            while True:
                both = await asyncio.gather(_reclaim(store, cid, first.worker_id), _reclaim(store, cid, second.worker_id))
                if any(t.outcome == "ok" for t in both) or time.monotonic() - killed > 10:
                    break
                await asyncio.sleep(0.05)
            took_s = time.monotonic() - killed
            lock = (await redis.get(store.key(cid, "answering")) or b"").decode()
            after = await _reclaim(store, cid, second.worker_id)  # the new holder is alive: no second takeover
            return while_alive, without_take_over, took_s, list(both), lock, after
        finally:
            await first.stop()
            await second.stop()
            await redis.aclose()

    try:
        while_alive, without_take_over, took_s, both, lock, after = asyncio.run(scenario())
    finally:
        end_holder(holder)
    assert while_alive.outcome == "busy"
    assert without_take_over.outcome == "busy"  # a lock held by nobody alive still waits unless asked to take it
    assert sorted(t.outcome for t in both) == ["busy", "ok"], both
    assert took_s < 2, took_s  # the lock had 60 s left
    winner = next(t for t in both if t.outcome == "ok")
    assert winner.replaced.startswith(f"{dead_id}/") and lock == winner.lock_token
    assert [m["role"] for m in winner.history] == []  # the turn's history: nothing before its message
    assert after.outcome == "busy"


def test_a_lock_without_a_holder_named_is_never_taken_over(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> TurnStart:
        redis = Redis.from_url(redis_url)
        try:
            store = ConversationStore(redis, prefix=redis_prefix)
            cid = await _begun(store, "")  # a lock taken by a store that names no worker
            return await _reclaim(store, cid, "9-live")
        finally:
            await redis.aclose()

    assert asyncio.run(scenario()).outcome == "busy"


def test_an_answer_is_stored_and_announced_in_one_step(redis_url: str, redis_prefix: str) -> None:
    """A stored answer always has its `done` in the stream: the reclaim of a resend, which
    skips a stored answer, can then never leave a visitor waiting for a `done` that no one
    will write (what worker, Redis and supervisor kills in bench/chaos.py did to 30 to 45 turns a run)."""

    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]], int, TurnStart]:
        redis = Redis.from_url(redis_url)
        try:
            store = ConversationStore(redis, prefix=redis_prefix)
            cid = await _begun(store, "1-a")
            record = {"id": "m_1", "role": "assistant", "text": "Descale monthly.", "path": "composed", "confidence": 0.8}
            sources = {"type": "sources", "message_id": "m_1", "sources": []}
            done = {"type": "done", "message_id": "m_1", "path": "composed"}
            last = await store.add_message(cid, record, [sources, done])
            await store.unlock_answer(cid, (await redis.get(store.key(cid, "answering"))).decode())
            resent = await _reclaim(store, cid, "2-b")
            return await store.messages(cid), await store.events_after(cid, 0), last, resent
        finally:
            await redis.aclose()

    messages, events, last, resent = asyncio.run(scenario())
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert [(e["seq"], e["type"]) for e in events] == [(1, "user_message"), (2, "sources"), (3, "done")]
    assert last == 3 and events[-1]["message_id"] == "m_1"
    assert resent.outcome == "duplicate"  # stored (and announced): not answered again


class _SlowReplyStore(ConversationStore):
    """Fault injected: Redis has run the script that stores the answer, but its reply is late
    (a loaded loop, a slow network), so a cancel can come while the writer still waits."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        super().__init__(redis, prefix=prefix)
        self.written = asyncio.Event()

    async def add_message(self, conversation_id: str, message: dict[str, Any], frames: Sequence[dict[str, Any]] = ()) -> int:
        last = await super().add_message(conversation_id, message, frames)
        if message.get("role") == "assistant":
            self.written.set()
            await asyncio.sleep(0.5)
        return last


def test_an_answer_cancelled_while_it_is_being_stored_is_stored_once(
    redis_url: str, redis_prefix: str, sample_retriever: Retriever, embedder: SentenceEmbedder
) -> None:
    """A drain's deadline or a closing widget can cancel the answer task while the script that
    stores it runs: the answer must then stay stored once, not also as "cancelled" under the
    same id (bench/chaos.py found 2 to 9 such pairs a run around a SIGTERM)."""
    assistant = build_assistant(Settings(), sample_retriever, embedder, None, mode=AnswerMode.EXTRACTIVE)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        redis = Redis.from_url(redis_url)
        try:
            store = _SlowReplyStore(redis, redis_prefix)
            cid = await _begun(store, "1-a")
            lock = (await redis.get(store.key(cid, "answering"))).decode()
            unused = cast(Any, None)  # the feedback log and the rate limiter: an answer does not use them
            hub = EventHub(redis, redis_prefix)
            service = ChatService(Settings(redis_prefix=redis_prefix), store, assistant, Metrics(), hub, unused, unused)
            connection = Connection(service, cast(Any, SimpleNamespace(client=None)))
            connection.conversation_id = cid
            task = asyncio.create_task(connection._answer("m_1", "How do I descale my kettle?", [], lock, time.perf_counter()))
            await asyncio.wait_for(store.written.wait(), 60)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return await store.messages(cid), await store.events_after(cid, 0)
        finally:
            await redis.aclose()

    messages, events = asyncio.run(scenario())
    answers = [m for m in messages if m["role"] == "assistant"]
    assert [(m["id"], m["path"]) for m in answers] == [("m_1", "composed")], answers
    assert [e["path"] for e in events if e["type"] == "done"] == ["composed"]


class _LostReplyStore(ConversationStore):
    """Fault injected: Redis goes away as an answer finishes. The script that stores the answer
    ran (its `done` is in the event stream) but the reply is lost, and so is the lock's release."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        super().__init__(redis, prefix=prefix)
        self.faults = 2

    async def add_message(self, conversation_id: str, message: dict[str, Any], frames: Sequence[dict[str, Any]] = ()) -> int:
        last = await super().add_message(conversation_id, message, frames)
        if message.get("role") == "assistant" and self.faults == 2:
            self.faults -= 1
            raise RedisConnectionError("Connection closed by server.")
        return last

    async def unlock_answer(self, conversation_id: str, token: str) -> None:
        if self.faults == 1:
            self.faults -= 1
            raise RedisConnectionError("Connection closed by server.")
        await super().unlock_answer(conversation_id, token)


class _Socket:
    client = None
    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))


def test_a_lock_left_by_a_redis_outage_does_not_make_the_next_message_busy(
    redis_url: str, redis_prefix: str, sample_retriever: Retriever, embedder: SentenceEmbedder
) -> None:
    """CI found it (tests/e2e/test_chat.py, Redis stopped just after an answer's `done`): the
    answer's lock could not be released, survived the restart in the append-only file, and the
    visitor's next message got `busy`. The connection now releases its own leftover lock."""
    assistant = build_assistant(Settings(), sample_retriever, embedder, None, mode=AnswerMode.EXTRACTIVE)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        redis = Redis.from_url(redis_url)
        try:
            store = _LostReplyStore(redis, redis_prefix)
            unused = cast(Any, None)  # the feedback log: answering does not use it
            hub = EventHub(redis, redis_prefix)
            service = ChatService(
                Settings(redis_prefix=redis_prefix), store, assistant, Metrics(), hub, unused, RateLimiter(redis, redis_prefix)
            )
            socket = _Socket()
            connection = Connection(service, cast(Any, socket))
            connection.conversation_id = (await store.create()).id
            for n, question in enumerate(["How do I descale my kettle?", "How long is the password reset link valid?"]):
                await connection._message(MessageFrame(type="message", client_message_id=f"q{n}", text=question))
                assert connection.answer is not None
                await connection.answer
            return socket.frames, await store.messages(connection.conversation_id)
        finally:
            await redis.aclose()

    frames, messages = asyncio.run(scenario())
    # Without the event hub's forwarder (which would have sent the stored `done`), the first
    # answer's lost reply reads as an interruption; the second message is answered, not `busy`.
    assert [f["code"] for f in frames if f.get("type") == "error"] == ["unavailable"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"], messages
