"""Encryption at rest, erasure, purge and the audit trail against a real Redis and real files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.conversations import ConversationStore
from bot.feedback import datasets
from bot.feedback.log import FeedbackLog
from bot.feedback.sink import FeedbackSink
from bot.privacy.audit import AuditLog
from bot.privacy.crypto import Sealer, SealError
from bot.privacy.erasure import Privacy, check_encryption, parse_age
from tests.bot.helpers import add_turn

SECRET = "jane.doe@example.com"
KEY_A = "ka:" + Sealer.new_key()
KEY_B = "kb:" + Sealer.new_key()


async def _dump(redis: Redis, prefix: str) -> bytes:
    """Every value under `prefix`, as bytes, whatever its type."""
    out = []
    async for key in redis.scan_iter(match=f"{prefix}*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out.append(await redis.get(key))
        elif kind == "hash":
            out += list((await redis.hgetall(key)).values())
        elif kind == "list":
            out += await redis.lrange(key, 0, -1)
        elif kind == "stream":
            out += [v for _, fields in await redis.xrange(key) for v in fields.values()]
        elif kind in ("set", "zset"):
            out += (
                [m if isinstance(m, bytes) else m[0] for m in await redis.zrange(key, 0, -1)]
                if kind == "zset"
                else list(await redis.smembers(key))
            )
    return b"\n".join(out)


def test_keys_seal_rotate_and_refuse_the_wrong_one() -> None:
    old = Sealer([KEY_A])
    sealed = old.seal({"text": SECRET})
    assert SECRET not in sealed and sealed.startswith("enc1:ka:")
    rotated = Sealer([KEY_B, KEY_A])  # new key first: seals with kb, still opens ka
    assert rotated.open(sealed) == {"text": SECRET} and rotated.seal("x").startswith("enc1:kb:")
    with pytest.raises(SealError, match="'ka'"):
        Sealer([KEY_B]).open(sealed)
    with pytest.raises(SealError, match="does not open"):
        Sealer(["ka:" + Sealer.new_key()]).open(sealed)  # same id, different key
    for bad, why in (("ka:not-base64!", "base64"), ("ka:" + "QUJD", "32 bytes"), ("k-1:" + Sealer.new_key(), "letters"),
                     (f"{KEY_A},{KEY_A}", "twice")):  # fmt: skip
        with pytest.raises(SealError, match=why):
            Sealer(bad.split(","))
    assert Sealer().open(Sealer().seal({"a": 1})) == {"a": 1}  # no keys: plain JSON


def test_sealed_store_keeps_no_plain_text_in_redis_or_files(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async def main() -> None:
        redis = Redis.from_url(redis_url)
        sealer = Sealer([KEY_A])
        assert "ON" not in await check_encryption(redis, redis_prefix, sealer)
        store = ConversationStore(redis, prefix=redis_prefix, sealer=sealer)
        feedback = FeedbackLog(store)
        conversation = await store.create(client={"address": "10.1.2.3"})
        answer = await add_turn(store, conversation.id, f"My email is {SECRET}", f"We will write to {SECRET} [1].")
        await store.append_event(conversation.id, {"type": "token", "message_id": answer, "delta": SECRET})
        await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="down", comment=SECRET)
        await FeedbackSink(redis, tmp_path, prefix=redis_prefix, sealer=sealer).run_once()
        assert SECRET.encode() not in await _dump(redis, redis_prefix)
        assert b"10.1.2.3" not in await _dump(redis, redis_prefix)
        assert SECRET not in "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
        # ... and everything reads back for those holding the key.
        assert (await store.messages(conversation.id))[0]["text"] == f"My email is {SECRET}"
        assert (await store.events_after(conversation.id, 0))[-1]["delta"] == SECRET
        assert (await store.get(conversation.id)).client == {"address": "10.1.2.3"}
        events, _ = datasets.read_events(tmp_path, sealer)
        assert events[0]["comment"] == SECRET
        with pytest.raises(SealError):
            datasets.read_events(tmp_path, Sealer([KEY_B]))
        # Start-up checks: no key, or the wrong key, for sealed data stops the server.
        with pytest.raises(SealError, match="not set"):
            await check_encryption(redis, redis_prefix, Sealer())
        with pytest.raises(SealError, match="'ka'"):
            await check_encryption(redis, redis_prefix, Sealer([KEY_B]))
        assert "'kb'" in await check_encryption(redis, redis_prefix, Sealer([KEY_B, KEY_A]))  # rotation
        await redis.aclose()

    import asyncio

    asyncio.run(main())


def test_erasure_removes_every_trace_and_only_that(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async def main() -> None:
        redis = Redis.from_url(redis_url)
        store = ConversationStore(redis, prefix=redis_prefix)
        feedback = FeedbackLog(store)
        privacy = Privacy(store, tmp_path)
        gone = await store.create(user_id="customer-42")
        also_gone = await store.create(user_id="customer-42")
        kept = await store.create()
        for conversation in (gone, also_gone, kept):
            answer = await add_turn(store, conversation.id, "How do I descale my kettle?", "Use vinegar [1].")
            await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="up")
        await store.change_status(gone.id, "request")
        await FeedbackSink(redis, tmp_path, prefix=redis_prefix).run_once()
        assert await privacy.conversations_of_user("customer-42") == sorted([gone.id, also_gone.id])

        preview = await privacy.erase([gone.id, also_gone.id], dry_run=True)
        assert preview.sink_lines == 2 and preview.feedback_events == 2 and preview.redis_keys > 6
        assert len(await store.messages(gone.id)) == 2  # a dry run changes nothing

        report = await privacy.erase(await privacy.conversations_of_user("customer-42"))
        assert report.sink_lines == 2 and report.feedback_events == 2 and report.files_rewritten
        assert [k async for k in redis.scan_iter(match=f"{redis_prefix}conv:{gone.id}*")] == []
        assert await redis.zscore(f"{redis_prefix}conversations", gone.id) is None
        assert await store.handoff_queue() == []
        assert await privacy.conversations_of_user("customer-42") == []
        events, _ = datasets.read_events(tmp_path)
        assert [e["conversation_id"] for e in events] == [kept.id]
        assert len(await store.messages(kept.id)) == 2
        remaining = await redis.xrange(f"{redis_prefix}feedback")
        assert [json.loads(f[b"event"])["conversation_id"] for _, f in remaining] == [kept.id]
        # The sink keeps appending to the rewritten file, once per event.
        answer = (await store.messages(kept.id))[1]["id"]
        await feedback.submit(kept.id, answer, actor_role="user", actor_id="v", rating="down")
        await FeedbackSink(redis, tmp_path, prefix=redis_prefix).run_once()
        assert len(datasets.read_events(tmp_path)[0]) == 2
        await redis.aclose()

    import asyncio

    asyncio.run(main())


def test_purge_and_the_audit_trail(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async def main() -> None:
        redis = Redis.from_url(redis_url)
        store = ConversationStore(redis, prefix=redis_prefix)
        privacy = Privacy(store, tmp_path)
        old = await store.create()
        fresh = await store.create()
        await redis.zadd(f"{redis_prefix}conversations", {old.id: time.time() - 40 * 86400})
        (tmp_path / "feedback-2020-01-01.jsonl").write_text("{}\n")
        (tmp_path / "feedback-2999-01-01.jsonl").write_text("{}\n")
        preview = await privacy.purge(parse_age("30d"), dry_run=True)
        assert preview.conversations == [old.id] and preview.files_deleted == ["feedback-2020-01-01.jsonl"]
        assert (tmp_path / "feedback-2020-01-01.jsonl").exists()
        await privacy.purge(parse_age("30d"))
        assert not (tmp_path / "feedback-2020-01-01.jsonl").exists() and (tmp_path / "feedback-2999-01-01.jsonl").exists()
        assert await redis.exists(store.key(old.id)) == 0 and await redis.exists(store.key(fresh.id)) == 1
        with pytest.raises(ValueError, match="not an age"):
            parse_age("soon")

        audit = AuditLog(redis, redis_prefix)
        await audit.record("alice", "agent", "transcript.read", fresh.id, "10.0.0.1")
        await audit.record("root", "admin", "privacy.erase", old.id, "cli", {"sink_lines": 0})
        entries = await audit.list()
        assert [e.action for e in entries] == ["privacy.erase", "transcript.read"]  # newest first
        assert [e.actor for e in await audit.list(action="transcript.read")] == ["alice"]
        assert (await audit.list(actor="root"))[0].details == {"sink_lines": 0}
        assert await audit.list(since=time.time() + 60) == []
        # The edges of time are empty answers, not Redis errors (they were a 503 over REST).
        assert await audit.list(until=0) == [] and await audit.list(until=0.0001) == []
        assert len(await audit.list(since=-62e9)) == 2
        with pytest.raises(ValueError, match="unknown audit action"):
            await audit.record("x", "agent", "transcript.delete")
        await redis.aclose()

    import asyncio

    asyncio.run(main())


def test_an_interrupted_rewrite_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between writing the new sink file and renaming it: the old file stays as it was."""
    from bot.privacy import atomic_files

    path = tmp_path / "feedback-2026-11-23.jsonl"
    original = b'{"conversation_id":"c_1","event_id":"a"}\n{"conversation_id":"c_2","event_id":"b"}\n'
    path.write_bytes(original)

    def crash(*_: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(atomic_files.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        atomic_files.atomic_replace(path, b'{"conversation_id":"c_2","event_id":"b"}\n')
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
