"""PII redaction for exported text: emails, card numbers, phone numbers, street addresses.

Deliberately greedy: a retraining set loses little when an order number that looks like a
phone number becomes `[PHONE]`, and a card number that slips through costs a lot. Card
numbers must pass the Luhn check, so ordinary long numbers (tracking ids) stay readable.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?!\w)")
_STREET = (
    r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|"
    r"parkway|pkwy|square|sq|highway|hwy|strasse|straße|rue|via|calle)"
)
_ADDRESS = re.compile(
    rf"(?i)\b\d{{1,5}}[a-z]?\s+(?:[a-zà-ÿ'’.-]+\s+){{0,4}}{_STREET}\b\.?"
    r"(?:,?\s*(?:apt|apartment|unit|suite|ste|flat|#)\.?\s*[\w-]+)?"
)

PLACEHOLDERS = ("[EMAIL]", "[CARD]", "[PHONE]", "[ADDRESS]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")


def _phone(match: re.Match[str]) -> str:
    if _DATE.fullmatch(match.group(0)):
        return match.group(0)
    digits = re.sub(r"\D", "", match.group(0))
    return "[PHONE]" if 7 <= len(digits) <= 15 else match.group(0)


def redact(text: str) -> str:
    """`text` with personal data replaced by placeholders such as `[EMAIL]`."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_card, text)
    text = _ADDRESS.sub("[ADDRESS]", text)
    return _PHONE.sub(_phone, text)
