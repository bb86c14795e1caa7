"""An answer whose visitor's socket dropped goes on for the grace period (server/chat.py).

The answer here is a plain task that sleeps: what is under test is when the service lets it
run and when it cancels it, decided from real Redis pub/sub subscriber counts and a real
cancel notice between two workers' event hubs. The whole path over a real socket is in
tests/e2e/test_chat.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from server.chat import ChatService
from server.events import EventHub
from server.settings import Settings


async def _nothing(_frame: dict[str, Any] | None) -> None:
    return None


class _Worker:
    """What one worker holds: a Redis client, its event hub and its chat service."""

    def __init__(self, redis_url: str, prefix: str, data_dir: Path, grace_s: float) -> None:
        self.redis = Redis.from_url(redis_url)
        self.events = EventHub(self.redis, prefix)
        settings = Settings(data_dir=data_dir, redis_url=redis_url, redis_prefix=prefix, answer_grace_s=grace_s)
        # The chat service's other parts are not used by the grace period.
        unused = cast(Any, None)
        self.chat = ChatService(settings, unused, unused, unused, self.events, unused, unused)

    async def __aenter__(self) -> _Worker:
        await self.events.start()
        await asyncio.sleep(0.2)  # the hub's pub/sub connection is subscribed
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.events.stop()
        await self.redis.aclose()


def _answer(seconds: float) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(asyncio.sleep(seconds))


def test_an_answer_nobody_comes_back_for_is_cancelled_after_the_grace_period(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    async def scenario() -> tuple[bool, bool, float]:
        async with _Worker(redis_url, redis_prefix, tmp_path, grace_s=0.4) as worker:
            answer = _answer(30)
            started = asyncio.get_running_loop().time()
            worker.chat.keep_answering("c_1", answer)
            still_running = not answer.done()
            await asyncio.wait({answer}, timeout=5)
            return still_running, answer.cancelled(), asyncio.get_running_loop().time() - started

    still_running, cancelled, after_s = asyncio.run(scenario())
    assert still_running and cancelled
    assert 0.35 <= after_s < 2


def test_an_answer_goes_on_while_a_socket_on_any_worker_listens_and_finishes(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        async with (
            _Worker(redis_url, redis_prefix, tmp_path, grace_s=0.2) as writer,
            _Worker(redis_url, redis_prefix, tmp_path, grace_s=0.2) as reader,
        ):
            await reader.events.subscribe("c_2", _nothing)  # the visitor reconnected, to the other worker
            answer = _answer(1.0)  # five grace periods
            writer.chat.keep_answering("c_2", answer)
            await asyncio.wait({answer}, timeout=5)
            await reader.events.unsubscribe("c_2", _nothing)
            await asyncio.sleep(0.1)
            return answer.done() and not answer.cancelled(), "c_2" in writer.chat.detached, await writer.events.listened("c_2")

    finished, still_held, listened = asyncio.run(scenario())
    assert finished and not still_held and not listened


def test_a_cancel_sent_to_another_worker_stops_the_detached_answer(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool]:
        async with (
            _Worker(redis_url, redis_prefix, tmp_path, grace_s=30) as writer,
            _Worker(redis_url, redis_prefix, tmp_path, grace_s=30) as other,
        ):
            answer = _answer(30)
            writer.chat.keep_answering("c_3", answer)
            local = other.chat.cancel_answer("c_3")  # the other worker does not write it...
            await other.events.request_cancel("c_3")  # ...so it tells every worker
            await asyncio.wait({answer}, timeout=5)
            return local, answer.cancelled()

    local, cancelled = asyncio.run(scenario())
    assert not local and cancelled
