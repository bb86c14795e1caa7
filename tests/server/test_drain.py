"""What a draining worker waits for before it closes its sockets (server/chat.py, `ChatService.drain`).

The answers here are plain tasks that sleep, on a chat service with a real Redis event hub:
what is under test is which answers the drain waits for and when it gives up. The whole
path, a SIGTERM to a real server with real sockets, is in tests/e2e/test_chat.py
(`test_a_message_sent_while_the_server_drains_is_resent_not_cut_off`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.server.test_answer_grace import _answer, _Worker


def test_the_drain_waits_for_an_answer_begun_after_it_started(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    """A message frame already being handled when the SIGTERM came begins its answer a Redis
    round trip later, and the visitor may drop the socket then: the drain, which used to
    look only at the answers running when it started, waits for that one too."""

    async def scenario() -> tuple[bool, bool, bool]:
        async with _Worker(redis_url, redis_prefix, tmp_path, grace_s=15) as worker:
            chat = worker.chat
            chat.turns_beginning = 1  # the frame is past the drain check; its answer does not exist yet
            drain = asyncio.create_task(chat.drain(10))
            await asyncio.sleep(0.2)
            waited_for_the_turn = not drain.done()
            late = _answer(0.5)
            chat.finish_while_draining(late)  # begun, and its socket closed meanwhile
            chat.turns_beginning = 0
            await asyncio.sleep(0.2)
            waited_for_the_answer = not drain.done()
            await asyncio.wait({drain}, timeout=5)
            return waited_for_the_turn, waited_for_the_answer, late.done() and not late.cancelled()

    waited_for_the_turn, waited_for_the_answer, finished = asyncio.run(scenario())
    assert waited_for_the_turn and waited_for_the_answer and finished


def test_the_drain_cuts_what_is_left_at_its_deadline(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool, float]:
        async with _Worker(redis_url, redis_prefix, tmp_path, grace_s=15) as worker:
            quick, slow = _answer(0.1), _answer(30)
            worker.chat.finish_while_draining(quick)
            worker.chat.finish_while_draining(slow)
            started = asyncio.get_running_loop().time()
            await worker.chat.drain(0.5)
            return quick.done() and not quick.cancelled(), slow.cancelled(), asyncio.get_running_loop().time() - started

    quick_finished, slow_cancelled, took_s = asyncio.run(scenario())
    assert quick_finished and slow_cancelled
    assert 0.45 <= took_s < 3
