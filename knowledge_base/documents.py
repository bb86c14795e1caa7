"""A loaded document: the unit that is ingested, updated and removed as a whole."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from retrieval.types import Visibility


@dataclass(frozen=True, slots=True)
class Section:
    """Text under one heading path (["Billing", "Refunds"]); the chunker never crosses one."""

    headings: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Document:
    """One help article, FAQ entry or file, with a stable id.

    `kind == "faq"` documents are kept as a single chunk (question and answer together).
    """

    id: str
    title: str
    source: str
    sections: tuple[Section, ...]
    url: str | None = None
    visibility: Visibility = Visibility.PUBLIC
    tags: tuple[str, ...] = ()
    kind: str = "article"
    metadata: dict[str, str] = field(default_factory=dict)

    def content_hash(self, salt: str = "") -> str:
        """Changes whenever anything that ends up in the index changes."""
        payload = json.dumps(
            {
                "title": self.title,
                "url": self.url,
                "visibility": self.visibility.value,
                "tags": list(self.tags),
                "kind": self.kind,
                "sections": [[list(s.headings), s.text] for s in self.sections],
                "salt": salt,
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class LoadError(Exception):
    """A file that cannot be ingested; the message says exactly why."""


_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str, max_length: int = 60) -> str:
    slug = _SLUG.sub("-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "untitled"


def parse_visibility(value: object, where: str) -> Visibility:
    text = str(value or "public").strip().lower()
    try:
        return Visibility(text)
    except ValueError:
        raise LoadError(f"{where}: visibility must be 'public' or 'internal', got {value!r}") from None


def parse_tags(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, list) else re.split(r"[;,|]", str(value))
    return tuple(sorted({str(t).strip().lower() for t in items if str(t).strip()}))
