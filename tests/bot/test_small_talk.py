"""Only a message that is nothing but small talk gets a friendly line instead of a search."""

from __future__ import annotations

import pytest

from bot.small_talk import ABOUT_ME_REPLY, CLOSING_REPLY, GREETING_REPLY, small_talk_reply, without_small_talk


@pytest.mark.parametrize(
    "message",
    ["hi", "Hello!", "hey there", "Good morning :)", "hi hi", "  Hiya!! ", "hello?", "help", "i need help", "can you help me?"],
)
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


@pytest.mark.parametrize(
    ("message", "question"),
    [
        ("Hi! how do i descale?", "how do i descale?"),
        ("Hello there, how do i descale", "how do i descale"),
        ("hey quick question - can i return it?", "can i return it?"),
        ("sorry, where is my order?", "where is my order?"),
        ("how do i descale? Thanks!", "how do i descale?"),
        ("does the warranty cover it thank you so much!!", "does the warranty cover it"),
        ("Good morning team! My kettle is leaking. Thanks in advance", "My kettle is leaking."),
        ("hiya can i pay with paypal pls", "can i pay with paypal"),
        ("it boils for an hour, right please?", "it boils for an hour, right?"),
        ("Thanks, that worked. One more thing: how do i descale?", "how do i descale?"),
        ("can you help me? how do i descale", "how do i descale"),
        ("btw can i pay in advance", "can i pay in advance"),
        # Words that only begin or end like small talk stay.
        ("is the hidden fee real", "is the hidden fee real"),
        ("can i pay in advance", "can i pay in advance"),
        ("is my warranty valid", "is my warranty valid"),
        # Nothing but small talk: the message as it is (small_talk_reply answers it).
        ("thanks!", "thanks!"),
    ],
)
def test_small_talk_around_a_question_is_not_part_of_it(message: str, question: str) -> None:
    assert without_small_talk(message) == question


@pytest.mark.parametrize(
    "message",
    [
        "are you a bot?",
        "Are you an AI?",
        "are you a real person?",
        "who am i talking to",
        "what can you help me with?",
        "hi, are u a robot",
    ],
)
def test_asking_who_or_what_the_assistant_is_gets_an_introduction(message: str) -> None:
    """ "are you a bot?" got "I couldn't find it in our help center"; "are you a real person?" was taken for
    a request for one."""
    reply = small_talk_reply(message, "Acme")
    assert reply == ABOUT_ME_REPLY.format(company="Acme") and "I'm Acme's virtual assistant" in reply


@pytest.mark.parametrize("message", ["are you open on sundays?", "what can you tell me about descaling", "who is brewlo"])
def test_a_question_about_something_else_is_not_an_introduction(message: str) -> None:
    assert small_talk_reply(message, "Acme") is None
