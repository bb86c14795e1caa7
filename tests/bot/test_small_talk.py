"""Only a message that is nothing but small talk gets a friendly line instead of a search."""

from __future__ import annotations

import pytest

from bot.small_talk import CLOSING_REPLY, GREETING_REPLY, small_talk_reply


@pytest.mark.parametrize("message", ["hi", "Hello!", "hey there", "Good morning :)", "hi hi", "  Hiya!! "])
def test_greetings_get_a_greeting(message: str) -> None:
    assert small_talk_reply(message) == GREETING_REPLY


@pytest.mark.parametrize(
    "message", ["thanks", "Thank you so much!", "thx", "ok thanks, bye", "great, that helped!", "Perfect. Cheers", "bye"]
)
def test_thanks_and_goodbyes_get_a_closing_line(message: str) -> None:
    assert small_talk_reply(message) == CLOSING_REPLY


@pytest.mark.parametrize(
    "message",
    [
        "hi, how do I descale my kettle?",
        "thanks but it still doesn't heat",
        "hello? my order never arrived",
        "ok so how do I cancel",
        "is it ok to boil milk",
        "hi " * 40,  # long: not small talk whatever it is
        "what does thx mean",
    ],
)
def test_a_question_with_small_talk_in_it_is_a_question(message: str) -> None:
    assert small_talk_reply(message) is None
