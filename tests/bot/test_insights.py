"""Per-day insights against a real Redis: what is counted as events are recorded equals what
the backfill counts from the stored conversations, and a changed rating moves its count."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from bot.conversations import ConversationStore
from bot.feedback.log import FeedbackLog
from bot.insights.daily import InsightsReport, backfill


async def _answer(store: ConversationStore, cid: str, question: str, path: str, ttft_s: float, **extra: Any) -> str:
    answer_id = f"m_{uuid.uuid4().hex}"
    cmid = uuid.uuid4().hex
    turn = await store.begin_turn(
        cid,
        client_message_id=cmid,
        answer_id=answer_id,
        user_message={"id": f"u_{uuid.uuid4().hex}", "role": "user", "text": question, "created": time.time()},
        event={"type": "user_message", "text": question},
        lock_ttl_s=30,
        history=12,
    )
    timings = {"time_to_first_token_s": ttft_s, "server_overhead_s": 0.001, "total_s": ttft_s}
    record = {"id": answer_id, "role": "assistant", "text": "…", "path": path, "timings": timings, "created": time.time()}
    await store.add_message(cid, {**record, **extra})
    await store.unlock_answer(cid, turn.lock_token)
    return answer_id


def test_live_counts_equal_the_backfill(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        redis = Redis.from_url(redis_url)
        try:
            store = ConversationStore(redis, prefix=redis_prefix, ttl_s=3600)
            feedback = FeedbackLog(store)
            report = InsightsReport(store.insights, redis)
            rated, unsure, asked, fine = [(await store.create()).id for _ in range(4)]
            answer = await _answer(store, rated, "How do I descale?", "composed", 0.05)
            for rating in ("up", "down"):
                await feedback.submit(rated, answer, actor_role="user", actor_id="v", rating=rating)
            await _answer(store, unsure, "Bitcoin?", "not_sure", 0.02, handoff=True, handoff_reason="not_sure")
            await _answer(store, asked, "Where is my order?", "composed", 0.04)
            await store.change_status(asked, "request")
            await _answer(store, fine, "How do I descale?", "composed", 0.03)
            today = datetime.now(UTC).date()
            live = await report.figures("day", today, today)
            assert live["total"] | {"time_to_first_text_p50_s": 0, "time_to_first_text_p95_s": 0} == {
                "start": today.isoformat(),
                "end": today.isoformat(),
                "conversations": 4,
                "answered": 4,
                "resolved": 1,
                "resolution_rate": 0.25,
                "answers": 4,
                "paths": {"composed": 3, "not_sure": 1},
                "ratings": {"up": 0, "down": 1},  # the latest rating of each answer
                "handoffs": {"not_sure": 1, "requested": 1},
                "handed_off": 2,
                "time_to_first_text_p50_s": 0,
                "time_to_first_text_p95_s": 0,
                "timed_answers": 4,
            }
            assert live["total"]["time_to_first_text_p50_s"] == 0.036  # median of 0.031, 0.021, 0.041, 0.051

            # The same conversations as a version without insights left them: no marks, no day keys.
            for cid in (rated, unsure, asked, fine):
                await redis.hdel(store.key(cid), "ins", "ins:seen", "ins:answered", "ins:handoff", "ins:downs")
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{redis_prefix}insights:*")])
            assert (await report.figures("day", today, today))["total"]["conversations"] == 0
            assert await backfill(store, store.insights) == 4
            assert await backfill(store, store.insights) == 0  # each conversation is counted once
            assert await report.figures("day", today, today) == live
        finally:
            await redis.aclose()

    asyncio.run(main())
