"""Markdown articles, with optional YAML front matter (id, title, url, visibility, tags)."""

from __future__ import annotations

import re

import yaml

from knowledge_base.documents import Document, Section, parse_tags, parse_visibility
from knowledge_base.loaders.base import LoadError, SourceFile, read_text

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*\n", re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1")


def plain_markdown(text: str) -> str:
    """Markdown inline syntax reduced to the words a reader sees."""
    text = _LINK.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\2", text)
    return re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "- ", text, flags=re.MULTILINE)


def split_front_matter(text: str) -> tuple[dict[str, object], str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise LoadError(f"invalid YAML front matter: {exc}") from None
    if not isinstance(meta, dict):
        raise LoadError("front matter must be a YAML mapping (key: value lines)")
    return meta, text[match.end() :]


class MarkdownLoader:
    extensions = (".md", ".markdown")

    def load(self, source: SourceFile) -> list[Document]:
        meta, body = split_front_matter(read_text(source.path))
        title = str(meta.get("title") or "").strip()
        sections: list[Section] = []
        stack: list[tuple[int, str]] = []
        lines: list[str] = []
        in_fence = False

        def flush() -> None:
            text = plain_markdown("\n".join(lines)).strip()
            if text:
                sections.append(Section(tuple(h for _, h in stack), text))
            lines.clear()

        for line in body.splitlines():
            if _FENCE.match(line.strip()):
                in_fence = not in_fence
                lines.append(line)
                continue
            heading = None if in_fence else _HEADING.match(line)
            if not heading:
                lines.append(line)
                continue
            flush()
            level, text = len(heading.group(1)), plain_markdown(heading.group(2)).strip()
            if level == 1:  # the document's own title, not a section of it
                title = title or text
                stack.clear()
                continue
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
        flush()
        if not sections:
            raise LoadError("no text besides headings and front matter")
        return [
            Document(
                id=str(meta.get("id") or source.document_id),
                title=title or source.path.stem.replace("-", " ").replace("_", " ").capitalize(),
                source=str(source.path),
                sections=tuple(sections),
                url=str(meta["url"]) if meta.get("url") else None,
                visibility=parse_visibility(meta.get("visibility"), "front matter"),
                tags=parse_tags(meta.get("tags")),
            )
        ]
