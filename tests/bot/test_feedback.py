"""Feedback against a real Redis: validation, last-one-wins, de-duplication, the sink's crash safety."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from bot.conversations import ConversationNotFound, ConversationStore
from bot.feedback.log import FeedbackError, FeedbackLog
from bot.feedback.sink import GROUP, FeedbackSink
from tests.bot.helpers import add_turn

T = TypeVar("T")


def run_with_store(redis_url: str, prefix: str, work: Callable[[ConversationStore, FeedbackLog], Awaitable[T]]) -> T:
    async def main() -> T:
        redis = Redis.from_url(redis_url)
        try:
            store = ConversationStore(redis, prefix=prefix, ttl_s=3600)
            return await work(store, FeedbackLog(store))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def lines(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("feedback-*.jsonl")) for line in path.read_text().splitlines()]


def test_the_latest_rating_wins_and_every_event_is_kept(redis_url: str, redis_prefix: str) -> None:
    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        conversation = await store.create()
        answer = await add_turn(store, conversation.id, "How do I descale my kettle?", "Use vinegar and water [1].")
        await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up")
        await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="down", comment="too vague")
        assert await feedback.latest_ratings(conversation.id) == {answer: "down"}
        history = await feedback.history(conversation.id)
        assert [e["rating"] for e in history] == ["up", "down"]
        assert history[1]["comment"] == "too vague"
        entries = await store.redis.xrange(feedback.stream_key)
        event = json.loads(entries[-1][1][b"event"])
        assert event["context"]["question"] == "How do I descale my kettle?"
        assert event["context"]["answer"] == "Use vinegar and water [1]."
        assert event["context"]["passages"][0]["document_id"] == "usage/descaling"
        assert event["context"]["model_id"] and event["context"]["prompt_version"] == "sb-prompt-2"

    run_with_store(redis_url, redis_prefix, work)


def test_bad_feedback_gets_a_precise_error_and_stores_nothing(redis_url: str, redis_prefix: str) -> None:
    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        conversation = await store.create()
        answer = await add_turn(store, conversation.id, "How do I descale my kettle?", "Use vinegar [1].")
        user_message = (await store.messages(conversation.id))[0]["id"]
        with pytest.raises(ConversationNotFound):
            await feedback.submit("c_" + "0" * 32, answer, actor_role="user", actor_id="v", rating="up")
        cases: list[tuple[str, dict[str, Any]]] = [
            ("unknown_message", {"message_id": "m_nope", "rating": "up"}),
            ("not_rateable", {"message_id": user_message, "rating": "up"}),
            ("invalid_rating", {"message_id": answer, "rating": "sideways"}),
            ("comment_too_long", {"message_id": answer, "rating": "down", "comment": "x" * 2001}),
            ("forbidden", {"message_id": answer, "correction": "Better answer."}),
            ("invalid_feedback", {"message_id": answer}),
        ]
        for code, fields in cases:
            message_id = fields.pop("message_id")
            with pytest.raises(FeedbackError) as caught:
                await feedback.submit(conversation.id, message_id, actor_role="user", actor_id="v", **fields)
            assert caught.value.code == code, (code, str(caught.value))
        assert await store.redis.xlen(feedback.stream_key) == 0
        assert await feedback.history(conversation.id) == []

    run_with_store(redis_url, redis_prefix, work)


def test_a_resent_event_is_stored_once(redis_url: str, redis_prefix: str) -> None:
    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        conversation = await store.create()
        answer = await add_turn(store, conversation.id, "How do I descale my kettle?", "Use vinegar [1].")
        first = await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up", event_id="e1")
        again = await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up", event_id="e1")
        assert not first.duplicate and again.duplicate and again.stream_id == first.stream_id
        assert await store.redis.xlen(feedback.stream_key) == 1
        # Event ids are printable ASCII, as the REST schema and the frames declare.
        for bad in ("é-1", "tab\there", "x" * 65):
            with pytest.raises(FeedbackError, match="printable ASCII"):
                await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up", event_id=bad)

    run_with_store(redis_url, redis_prefix, work)


class _CrashBeforeAck(FeedbackSink):
    """Writes the file, then dies before acknowledging: what a killed worker leaves behind."""

    async def _read(self, start: str, block_ms: int | None) -> int:
        reply = await self._redis.xreadgroup(GROUP, self.consumer, {self.stream: start}, count=100, block=block_ms)
        entries = reply[0][1] if reply else []
        if entries:
            await asyncio.to_thread(self._write, entries)
            raise ConnectionError("killed before XACK")
        return 0


def test_the_sink_writes_each_event_once_across_a_crash_and_a_torn_line(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        conversation = await store.create()
        answers = [await add_turn(store, conversation.id, f"Question {i}?", f"Answer {i} [1].") for i in range(3)]
        for answer in answers[:2]:
            await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up")
        with pytest.raises(ConnectionError):
            await _CrashBeforeAck(store.redis, tmp_path, prefix=redis_prefix, consumer="w1").run_once()
        assert len(lines(tmp_path)) == 2
        # A crash in the middle of the next write leaves half a line behind.
        await feedback.submit(conversation.id, answers[2], actor_role="user", actor_id="v", rating="down")
        partition = next(tmp_path.glob("feedback-*.jsonl"))
        with partition.open("ab") as handle:
            handle.write(b'{"event_id":"f_torn","stream_id":"1-0","rat')
        # The restarted worker (same consumer name) re-reads its pending entries and the new one.
        written = await FeedbackSink(store.redis, tmp_path, prefix=redis_prefix, consumer="w1").run_once()
        assert written == 1
        events = lines(tmp_path)  # every line parses: the torn one was cut off
        assert sorted(e["message_id"] for e in events) == sorted(answers)
        assert len({e["event_id"] for e in events}) == 3
        pending = await store.redis.xpending(f"{redis_prefix}feedback", GROUP)
        assert pending["pending"] == 0

    run_with_store(redis_url, redis_prefix, work)


def test_another_worker_claims_what_a_dead_one_left(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        conversation = await store.create()
        answer = await add_turn(store, conversation.id, "How do I descale my kettle?", "Use vinegar [1].")
        await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up")
        with pytest.raises(ConnectionError):
            await _CrashBeforeAck(store.redis, tmp_path, prefix=redis_prefix, consumer="dead").run_once()
        survivor = FeedbackSink(store.redis, tmp_path, prefix=redis_prefix, consumer="alive", claim_idle_s=0)
        assert await survivor.run_once() == 0  # claimed, found already in the file, acknowledged
        assert len(lines(tmp_path)) == 1
        assert (await store.redis.xpending(f"{redis_prefix}feedback", GROUP))["pending"] == 0

    run_with_store(redis_url, redis_prefix, work)


def test_acknowledged_feedback_survives_redis_being_killed(tmp_path: Path) -> None:
    """SIGKILL, not a clean stop: what Redis acknowledged is in its append-only file."""
    import signal

    from server.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    prefix = "kill:"

    async def before(store: ConversationStore, feedback: FeedbackLog) -> tuple[str, str]:
        conversation = await store.create()
        other = await store.create()
        answer = await add_turn(store, conversation.id, "How do I descale my kettle?", "Use vinegar [1].")
        with pytest.raises(FeedbackError) as foreign:  # an answer id from another conversation
            await feedback.submit(other.id, answer, actor_role="user", actor_id="v", rating="up")
        assert foreign.value.code == "unknown_message"
        await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="down", comment="nope")
        return conversation.id, answer

    try:
        cid, answer = run_with_store(url, prefix, before)
        assert server._process is not None
        server._process.send_signal(signal.SIGKILL)
        server._process.wait()
        server.start()

        async def after(store: ConversationStore, feedback: FeedbackLog) -> None:
            assert await feedback.latest_ratings(cid) == {answer: "down"}
            assert await FeedbackSink(store.redis, tmp_path / "files", prefix=prefix).run_once() == 1

        run_with_store(url, prefix, after)
        assert [e["comment"] for e in lines(tmp_path / "files")] == ["nope"]
    finally:
        server.stop()


def test_a_full_disk_keeps_events_in_the_stream_and_writes_each_once_when_space_returns(
    redis_url: str, redis_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC after part of a batch reached the file (a fault injected into os.write): the
    sink acknowledges nothing it did not write, and the same worker, once space returns,
    writes every event exactly once."""
    import errno

    import bot.feedback.sink as sink_module

    real_write = sink_module.os.write
    disk_full = True

    space = 40  # bytes left on the "disk": part of the first line fits, a torn line is left

    def write(fd: int, data: bytes) -> int:
        nonlocal space
        if not disk_full:
            return real_write(fd, data)
        if space == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = real_write(fd, data[:space])
        space -= written
        return written

    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        nonlocal disk_full
        conversation = await store.create()
        answers = [await add_turn(store, conversation.id, f"Question {i}?", f"Answer {i} [1].") for i in range(3)]
        for answer in answers:
            await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up")
        sink = FeedbackSink(store.redis, tmp_path, prefix=redis_prefix, consumer="w1")
        monkeypatch.setattr(sink_module.os, "write", write)
        for _ in range(2):  # the running sink retries while the disk is full
            with pytest.raises(OSError, match="No space left"):
                await sink.run_once()
        pending = await store.redis.xpending(f"{redis_prefix}feedback", GROUP)
        assert pending["pending"] == 3  # nothing acknowledged: the stream still holds them all
        disk_full = False
        assert await sink.run_once() == 3
        events = lines(tmp_path)  # every line parses: the torn one was cut off
        assert sorted(e["message_id"] for e in events) == sorted(answers)
        assert (await store.redis.xpending(f"{redis_prefix}feedback", GROUP))["pending"] == 0

    run_with_store(redis_url, redis_prefix, work)
