"""The default server (answer mode auto, no model that earned trust): the composer answers
over the real websocket, without loading the generator."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from redis.asyncio import Redis

from bot.conversations import ConversationStore
from tests.e2e.browser import chromium_page, require_browser
from tests.e2e.chat_client import Client, run
from tests.e2e.servers import data_dir_with_sample_index, served

DATA_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def composer_server(tmp_path_factory: pytest.TempPathFactory, sample_index: Path) -> Iterator[tuple[str, float, int]]:
    started = time.monotonic()
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "composer")
    with served(data, env={"SUPPORTBOT_ANSWER_MODE": "auto"}) as (process, base):
        DATA_DIRS[base] = data
        ready_s = time.monotonic() - started
        yield base, ready_s, psutil.Process(process.pid).memory_info().rss


async def ask(base: str, text: str) -> list[dict[str, object]]:
    client = await Client.open(base)
    try:
        assert (await client.start())["type"] == "ready"
        await client.send({"type": "message", "client_message_id": "1", "text": text})
        return await client.until("done")
    finally:
        await client.close()


def test_the_default_server_answers_without_loading_a_model(composer_server: tuple[str, float, int]) -> None:
    base, ready_s, rss = composer_server
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["answer_mode"] == "extractive" and ready["generator"] == "not needed", ready
    # About 0.9-1.0 GB here: torch, the embedder, the index, and (in this dev venv only, where the
    # [train] extra is installed) datasets, pandas and pyarrow, which sentence-transformers imports
    # when they are present. The bundled generator alone would add more than 1.5 GB.
    assert rss < 1_500_000_000, f"the server holds {rss / 1e9:.2f} GB without a generator"
    assert ready_s < 90  # seconds, not the minutes a model load takes (loose: CI's 2 cores are shared)


@pytest.mark.parametrize(
    ("trap", "article", "truth", "false"),
    [
        (
            "can I put my kettle in the dishwasher?",
            "usage/descaling",
            r"(?i)\bnever\b[^.]*dishwasher",
            r"(?i)(?<!never )(?<!not )\b(can|may) (be placed|go|put)[^.]{0,30}dishwasher",
        ),
        ("Are returns from Canada free?", "shipping/returns", r"\$9\.95", r"(?i)returns from canada are free"),
        (  # as a visitor types it: both typos are fixed before the search
            "can i put my ketle in the dishwashr",
            "usage/descaling",
            r"(?i)\bnever\b[^.]*dishwasher",
            r"(?i)(?<!never )(?<!not )\b(can|may) (be placed|go|put)[^.]{0,30}dishwasher",
        ),
    ],
)
def test_a_contradiction_trap_gets_the_articles_own_words(
    composer_server: tuple[str, float, int], trap: str, article: str, truth: str, false: str
) -> None:
    frames = run(ask(composer_server[0], trap))
    text = "".join(str(f["delta"]) for f in frames if f["type"] == "token")
    done = frames[-1]
    sources = next(f for f in frames if f["type"] == "sources")["sources"]
    assert done["path"] == "composed" and done["model_id"] == "composer", done
    assert re.search(truth, text) and not re.search(false, text), text
    assert sources[0]["document_id"] == article  # type: ignore[index]


def test_out_of_scope_gets_not_sure_and_the_offer_of_a_person(composer_server: tuple[str, float, int]) -> None:
    frames = run(ask(composer_server[0], "which nespresso pod is best for a strong lungo"))
    text = "".join(str(f["delta"]) for f in frames if f["type"] == "token")
    assert frames[-1]["path"] == "not_sure" and "connect you with a person" in text


def test_close_but_not_sure_quotes_the_closest_article_with_its_source_and_offers_a_person(
    composer_server: tuple[str, float, int],
) -> None:
    frames = run(ask(composer_server[0], "can I order a brewlo kettle through walmart"))
    text = "".join(str(f["delta"]) for f in frames if f["type"] == "token")
    assert frames[-1]["path"] == "not_sure", frames[-1]
    assert text.startswith("I'm not sure this answers your question.") and "connect you with a person" in text, text
    sources = [s for f in frames if f["type"] == "sources" for s in f["sources"]]  # type: ignore[attr-defined]
    assert sources and sources[0]["title"] in text, (sources, text)


def test_a_greeting_and_thanks_get_a_friendly_line_not_the_offer_of_a_person(composer_server: tuple[str, float, int]) -> None:
    async def chat() -> list[list[dict[str, object]]]:
        client = await Client.open(composer_server[0])
        try:
            await client.start()
            turns = []
            for number, text in enumerate(["hi", "how do I descale my kettle?", "thanks, that helped!"]):
                await client.send({"type": "message", "client_message_id": str(number), "text": text})
                turns.append(await client.until("done"))
            return turns
        finally:
            await client.close()

    hello, question, thanks = run(chat())
    for frames, line in ((hello, "What can I help you with"), (thanks, "Glad I could help")):
        assert frames[-1]["path"] == "small_talk", frames
        assert line in "".join(str(f["delta"]) for f in frames if f["type"] == "token")
        assert not [f for f in frames if f["type"] == "sources" and f["sources"]]
        assert "connect you with a person" not in str(frames)
    assert question[-1]["path"] == "composed"  # the greeting before it changed nothing


def test_a_message_of_two_questions_and_who_am_i_talking_to(composer_server: tuple[str, float, int]) -> None:
    """Each question of a message is answered or named as not found, with the offer of a person
    and its handoff frame; "are you a bot?" gets an introduction, not "I couldn't find it"."""

    async def chat() -> list[list[dict[str, object]]]:
        client = await Client.open(composer_server[0])
        try:
            await client.start()
            text = "Hi! can i return my kettle? how do i set up my philips hue lights?"
            await client.send({"type": "message", "client_message_id": "1", "text": text})
            both = await client.until("done")
            both += await client.until("handoff")  # stored after the answer's done
            await client.send({"type": "message", "client_message_id": "2", "text": "are you a bot?"})
            return [both, await client.until("done")]
        finally:
            await client.close()

    both, bot = run(chat())
    text = "".join(str(f["delta"]) for f in both if f["type"] == "token")
    assert next(f for f in both if f["type"] == "done")["path"] == "composed" and "30 days" in text, text
    assert "your second question" in text and "philips" not in text.lower()
    done = next(f for f in both if f["type"] == "done")
    handoffs = [f for f in both + bot if f["type"] == "handoff"]
    assert [(f["message_id"], f["reason"]) for f in handoffs] == [(done["message_id"], "not_sure")], handoffs
    text = "".join(str(f["delta"]) for f in bot if f["type"] == "token")
    assert bot[-1]["path"] == "small_talk" and "virtual assistant" in text, bot


def test_yes_to_the_offer_of_a_person_puts_the_conversation_in_the_queue(composer_server: tuple[str, float, int]) -> None:
    async def say_yes() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        client = await Client.open(composer_server[0])
        try:
            assert (await client.start())["type"] == "ready"
            await client.send({"type": "message", "client_message_id": "1", "text": "which nespresso pod is best for a lungo"})
            offer = await client.until("done")
            await client.send({"type": "message", "client_message_id": "2", "text": "yes please"})
            return offer, await client.until("status")
        finally:
            await client.close()

    offer, accepted = run(say_yes())
    assert offer[-1]["path"] == "not_sure"
    assert [f["path"] for f in accepted if f["type"] == "done"] == ["human_requested"], accepted
    assert accepted[-1]["status"] == "handoff" and accepted[-1]["reason"] == "asked for a person", accepted[-1]


def test_a_visitor_who_asks_again_the_moment_an_answer_is_done_is_answered(composer_server: tuple[str, float, int]) -> None:
    """A composed answer takes milliseconds; the next question sent on its `done` must not meet
    the lock the last answer is still releasing."""

    async def back_to_back() -> list[str]:
        client = await Client.open(composer_server[0])
        paths = []
        try:
            assert (await client.start())["type"] == "ready"
            for n, question in enumerate(
                ["How do I descale my kettle?", "Do you ship to Canada?", "How do I reset my password?"]
            ):
                await client.send({"type": "message", "client_message_id": str(n), "text": question})
                frames = await client.until("done")
                assert not [f for f in frames if f["type"] == "error"], frames
                paths.append(str(frames[-1]["path"]))
        finally:
            await client.close()
        return paths

    assert run(back_to_back()) == ["composed", "composed", "composed"]


def test_a_thumbs_down_offers_a_person_under_that_answer_once(composer_server: tuple[str, float, int]) -> None:
    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        client = await Client.open(composer_server[0])
        try:
            await client.start()
            await client.send({"type": "message", "client_message_id": "1", "text": "How do I descale my kettle?"})
            done = (await client.until("done"))[-1]
            await client.send({"type": "rate", "message_id": done["message_id"], "rating": "down", "event_id": "d1"})
            first = [await client.recv(), await client.recv()]
            await client.send({"type": "rate", "message_id": done["message_id"], "rating": "down", "event_id": "d2"})
            again = [await client.recv()]
            with pytest.raises(TimeoutError):
                again.append(await client.recv(timeout=1.5))  # no second offer
            return first, again
        finally:
            await client.close()

    first, again = run(scenario())
    assert first[0]["type"] == "rated" and first[1]["type"] == "handoff"
    assert first[1]["reason"] == "rated_down" and first[1]["message_id"] == first[0]["message_id"]
    assert [f["type"] for f in again] == ["rated"]


def test_the_widget_shows_a_contradiction_trap_the_articles_own_words(composer_server: tuple[str, float, int]) -> None:
    """What a visitor sees in the widget, in headless Chromium: the trap question gets the
    article's answer (never the tempting false one), with the article as its source."""
    require_browser()

    async def scenario() -> tuple[str, str]:
        async with chromium_page() as page:
            await page.goto(f"{composer_server[0]}/")
            await page.locator("#supportbot-widget .launcher").click()
            widget = page.locator("#supportbot-widget")
            # The demo page's tag sets no title or greeting: the server's settings show.
            await widget.locator("li.msg.note", has_text="Ask me anything about Brewlo").wait_for(timeout=30_000)
            assert await widget.locator("header h2").inner_text() == "Brewlo Assistant"
            await widget.locator("textarea").fill("Can I put the kettle in the dishwasher to clean it?")
            await widget.locator("textarea").press("Enter")
            answer = widget.locator("li.msg.bot").first
            await answer.locator(".rate").wait_for(timeout=30_000)  # shown once the answer is done
            text = await answer.locator(".body").inner_text()
            href = await answer.locator(".sources a").first.get_attribute("href") or ""
            return text, href

    text, href = run(scenario())
    assert re.search(r"(?i)\bnever\b[^.]*dishwasher", text), text
    assert not re.search(r"(?i)(?<!never )(?<!not )\b(can|may) (be placed|go|put)[^.]{0,30}dishwasher|^\W*yes\b", text), text
    assert href == "https://help.brewlo.example/usage/descaling"


def test_a_message_whose_worker_died_mid_answer_is_answered_when_the_widget_resends_it(
    composer_server: tuple[str, float, int],
) -> None:
    """A worker SIGKILLed mid-answer leaves the turn begun (the message stored, its answer id
    given out, the lock taken) and never finished. The widget resends the message after it
    reconnects: once the dead worker's lock lapses (seconds: live workers renew theirs), the
    message is answered under the answer id first given out, once."""
    base = composer_server[0]
    data = DATA_DIRS[base]

    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]], float]:
        client = await Client.open(base)
        redis = Redis(unix_socket_path=str(data / "redis" / "redis.sock"))
        try:
            cid = str((await client.start())["conversation_id"])
            store = ConversationStore(redis)  # what the worker that then died did, from the same Redis
            question = "How do I descale my kettle?"
            begun = await store.begin_turn(
                cid,
                client_message_id="lost",
                answer_id="m_dead",
                user_message={"id": "u_dead", "role": "user", "text": question, "client_message_id": "lost"},
                event={"type": "user_message", "message_id": "u_dead", "text": question, "client_message_id": "lost"},
                lock_ttl_s=2,
                history=12,
            )
            assert begun.outcome == "ok" and begun.lock_token
            started = time.monotonic()
            # The widget resends on reconnect and hears `duplicate`: it then waits for that answer.
            await client.send({"type": "message", "client_message_id": "lost", "text": question})
            frames = await client.until("done", timeout=30)
            waited = time.monotonic() - started
            await client.send({"type": "message", "client_message_id": "lost", "text": question})
            again = [await client.recv()]
            return frames, again, waited
        finally:
            await client.close()
            await redis.aclose()

    frames, again, waited = run(scenario())
    assert [f for f in frames if f["type"] == "duplicate"] == [
        {"v": 1, "type": "duplicate", "client_message_id": "lost", "message_id": "m_dead"}
    ]
    done = frames[-1]
    assert done["type"] == "done" and done["message_id"] == "m_dead" and done["path"] == "composed", frames
    assert "".join(str(f["delta"]) for f in frames if f["type"] == "token").strip()
    assert waited < 10  # the dead worker's 2 s lock, not a generator timeout
    assert again == [{"v": 1, "type": "duplicate", "client_message_id": "lost", "message_id": "m_dead"}]
