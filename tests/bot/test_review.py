"""Agents' lists, transcripts and takeovers against a real Redis."""

from __future__ import annotations

import time

import pytest

from bot.conversations import ConversationNotFound, ConversationStore, HeldByAnotherAgent
from bot.feedback.log import FeedbackLog
from bot.feedback.review import ConversationQuery, Review
from tests.bot.helpers import add_turn
from tests.bot.test_feedback import run_with_store


def test_filters_search_and_pages(redis_url: str, redis_prefix: str) -> None:
    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        review = Review(store, feedback)
        ids = []
        for i in range(7):
            conversation = await store.create()
            answer = await add_turn(
                store,
                conversation.id,
                f"Question {i} about {'descaling' if i % 2 else 'shipping'}",
                f"Answer {i} [1].",
                path="fallback" if i == 3 else "generated",
                confidence=0.2 if i == 5 else 0.8,
            )
            if i in (1, 2):
                await feedback.submit(conversation.id, answer, actor_role="user", actor_id="v", rating="down")
            if i == 2:
                await feedback.submit(conversation.id, answer, actor_role="agent", actor_id="a", correction="Better.")
            ids.append(conversation.id)
        await store.change_status(ids[4], "request")

        async def found(**query: object) -> list[str]:
            page = await review.search(ConversationQuery(**query))  # type: ignore[arg-type]
            return [item.conversation.id for item in page.items]

        newest_first = [ids[4], ids[6], ids[5], ids[3], ids[2], ids[1], ids[0]]  # asking for a person is activity
        assert await found() == newest_first
        assert await found(rating="down") == [ids[2], ids[1]]
        assert await found(corrected=True) == [ids[2]]
        assert await found(path="fallback") == [ids[3]]
        assert await found(low_confidence=0.5) == [ids[5]]
        assert await found(status="handoff", waiting=True) == [ids[4]]
        assert await found(text="DESCALING question") == [ids[5], ids[3], ids[1]]
        assert await found(since=time.time() + 60) == []
        # Pages of three, following the cursor, see each conversation once.
        seen: list[str] = []
        cursor = None
        while True:
            page = await review.search(ConversationQuery(limit=3, cursor=cursor))
            seen += [item.conversation.id for item in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == newest_first
        with pytest.raises(ValueError, match="cursor"):
            await review.search(ConversationQuery(cursor="drop table"))
        for not_a_score in ("nan", "inf", "-1"):  # float() takes the first two; Redis would refuse them
            with pytest.raises(ValueError, match="cursor"):
                await review.search(ConversationQuery(cursor=not_a_score))
        # The transcript attaches feedback to its message.
        transcript = await review.transcript(ids[2])
        answer = transcript["messages"][1]
        assert answer["rating"] == "down" and answer["correction"] == "Better."
        assert [f["kind"] for f in answer["feedback"]] == ["rating", "correction"]

    run_with_store(redis_url, redis_prefix, work)


def test_takeover_is_exclusive_and_the_bot_stays_silent(redis_url: str, redis_prefix: str) -> None:
    async def work(store: ConversationStore, feedback: FeedbackLog) -> None:
        conversation = await store.create()
        cid = conversation.id
        request = await store.change_status(cid, "request", reason="asked for a person")
        assert request.changed and request.status == "handoff" and request.agent == ""
        assert [c for c, _ in await store.handoff_queue()] == [cid]
        with pytest.raises(PermissionError):
            await store.add_agent_message(cid, "alice", "Hello")  # not taken over yet
        taken = await store.change_status(cid, "takeover", agent="alice")
        assert taken.changed and taken.agent == "alice"
        assert await store.handoff_queue() == []
        with pytest.raises(HeldByAnotherAgent) as held:
            await store.change_status(cid, "takeover", agent="bob")
        assert held.value.agent == "alice"
        with pytest.raises(HeldByAnotherAgent):
            await store.add_agent_message(cid, "bob", "Hi, Bob here")
        _, seq = await store.add_agent_message(cid, "alice", "Hi, Alice here")
        # While an agent holds it, a visitor's message is stored but the bot gets no lock to answer.
        turn = await store.begin_turn(
            cid,
            client_message_id="x1",
            answer_id="m_1",
            user_message={"id": "u_1", "role": "user", "text": "thanks"},
            event={"type": "user_message", "message_id": "u_1", "text": "thanks"},
            lock_ttl_s=30,
            history=12,
        )
        assert turn.outcome == "ok" and turn.status == "handoff" and turn.lock_token == ""
        events = await store.events_after(cid, 0)
        assert [e["type"] for e in events] == ["status", "status", "agent_message", "user_message"]
        assert events[1]["agent"] == "alice" and events[2]["seq"] == seq
        back = await store.change_status(cid, "handback", agent="alice")
        assert back.status == "bot" and back.agent == ""
        again = await store.change_status(cid, "handback", agent="alice")
        assert not again.changed
        with pytest.raises(ConversationNotFound):
            await store.change_status("c_" + "f" * 32, "takeover", agent="alice")
        await store.change_status(cid, "close", agent="alice")
        assert (await store.get(cid)).status == "closed"

    run_with_store(redis_url, redis_prefix, work)
