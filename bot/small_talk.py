"""Greetings, thanks and goodbyes: a friendly line, not a search of the help center.

Only a message that is nothing but small talk ("hi", "thanks, that helped!", "bye", "are you a
bot?") gets one;
"hi, how do I descale my kettle?" is a question and is answered as one. Without this, "hi"
got "I'm not sure about that" and the offer of a person, and "thanks" counted as a question
the help center could not answer.
"""

from __future__ import annotations

import re

from bot.grounding import split_sentences

_OPENERS = r"(hi|hello|hey|hiya|heya|howdy|greetings|good (morning|afternoon|evening|day)|yo)( there| all| team| guys)?"
_THANKS = (
    r"(thanks?|thank you|thank u|thx|ty|cheers|many thanks|much appreciated|appreciated)"
    r"( (so|very) much| a lot| a bunch| again| for (the|your) help| for helping)?"
)
_FINE = (
    r"(ok(ay)?|great|perfect|awesome|cool|nice|brilliant|got it|understood|all good|that helped|that'?s? (helpful|great|perfect|all|it)"
    r"|(that|it) (worked|did it|fixed it)|(that )?solved it)"
)
_BYE = r"(bye|goodbye|bye bye|see (you|ya)|have a (nice|good|great) (day|one|evening)|take care)"
_FILLER = r"[\s!?.,:;)(*~-]*"


def _whole(*parts: str) -> re.Pattern[str]:
    unit = "|".join(parts)
    return re.compile(rf"(?i)^{_FILLER}(({unit}){_FILLER})+$")


# A call for help that says nothing yet of what with: "help", "i need help", "can you help me?".
_HELP = r"((i )?(need|want) (some )?help|help( me| please| pls)*|(can|could) (you|u|someone|somebody) help( me)?( please)?|(is )?any(one|body) there)"
_GREETING = _whole(_OPENERS, _HELP)
_CLOSING = _whole(_THANKS, _FINE, _BYE)

# Small talk around a question: "Hi! how do i descale", "hey quick question - ...", "... Thanks!".
# Searched with it, the greeting's words counted as the question's: "Hi! " before each tune
# question took its sure answers with the key facts from 0.711 to 0.633.
_LEAD_INS = (
    r"(one more|another|a quick|quick|one last|a) (question|thing)|by the way|btw|sorry|excuse me|please"
    r"|(can|could) (you|u) (please )?help( me)?( out)?( please)?|i need (some |a little )?help( please)?"
    r"|i('ve| have)( got)? (a |one |another )?(quick |small )?question"
)
_LEADING = re.compile(rf"(?i)^(?:{_FILLER}(?:{_OPENERS}|{_LEAD_INS})\b)+{_FILLER}(?=\w)")
_TRAILING = re.compile(rf"(?i)(?<![\w'])(?:(?:{_THANKS})(?: in advance)?|please|pls|plz)(?:{_FILLER}(?:{_THANKS}|please))*\W*$")

# Who or what the visitor is talking to, and what it can do: "are you a bot?" got "I'm not sure
# about that: I couldn't find it in our help center", and "are you a real person?" was taken
# for a request for one.
_ABOUT_YOU = re.compile(
    r"(?i)^\W*(?:(?:hi|hello|hey)\W+)?(?:"
    r"(?:are|r) (?:you|u) (?:an? |the )?(?:real |actual |live )?(?:bot|robot|chat ?bot|ai|human|person|machine|computer|agent)"
    r"|(?:am i|are we) (?:talking|chatting|speaking) (?:to|with) (?:an? )?(?:real |actual |live )?(?:bot|robot|chat ?bot|ai|human|person|machine)"
    r"|who (?:am i (?:talking|chatting|speaking) (?:to|with)|is this|are you)"
    r"|what (?:are you|is this|can you (?:do|help(?: me)?(?: with)?)|do you do)"
    r"|how (?:can|do) you help(?: me)?|what can i ask(?: you)?"
    r")\W*$"
)

GREETING_REPLY = "Hello! What can I help you with today?"
CLOSING_REPLY = "Glad I could help! If there is anything else, just ask here."
ABOUT_ME_REPLY = (
    "I'm {company}'s virtual assistant. I answer from {company}'s help center and show you the articles I quote; "
    "when it doesn't answer your question, I say so. Ask me anything about our products, orders, billing or "
    "your account, or ask for a person at any time and I'll bring one from our support team into this chat."
)


def small_talk_reply(message: str, company: str = "our company") -> str | None:
    """The reply to a message that is only a greeting, thanks or goodbye, or asks who or what the
    assistant is (answered for `company`); None for anything else."""
    text = message.strip()
    if len(text) > 80:
        return None
    if _GREETING.match(text):
        return GREETING_REPLY
    if _CLOSING.match(text):
        return CLOSING_REPLY
    if _ABOUT_YOU.match(text):
        return ABOUT_ME_REPLY.format(company=company)
    return None


def without_small_talk(message: str) -> str:
    """The question without the greeting or lead-in before it or the thanks after it ("Hi! How do
    I descale? Thanks!" -> "How do I descale?", "Thanks, that worked. One more thing: ..."); the
    message as it is when nothing else is left."""
    # Whole sentences of small talk go first: "Thanks, that worked. One more thing: ..."
    sentences = [s for s in split_sentences(message) if small_talk_reply(s) is None]
    question = _LEADING.sub("", " ".join(sentences))
    trailing = _TRAILING.search(question)
    if trailing is not None:
        # "... right please?" is still a question: its question mark stays.
        question = question[: trailing.start()].rstrip() + ("?" if "?" in trailing.group(0) else "")
    return question.strip() or message.strip()
