"""HTML pages: visible text only, split at h1-h6, title from <title> or the first <h1>."""

from __future__ import annotations

from bs4 import BeautifulSoup, Tag

from knowledge_base.documents import Document, Section, parse_tags, parse_visibility
from knowledge_base.loaders.base import LoadError, SourceFile, read_text

_INVISIBLE = ["script", "style", "noscript", "template", "head", "nav", "footer", "svg", "iframe", "form", "button"]
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = ["p", "li", "pre", "td", "th", "dt", "dd", "blockquote", "figcaption", "summary"]


class HtmlLoader:
    extensions = (".html", ".htm")

    def load(self, source: SourceFile) -> list[Document]:
        soup = BeautifulSoup(read_text(source.path), "html.parser")

        def meta(name: str) -> str | None:
            tag = soup.find("meta", attrs={"name": name})
            content = tag.get("content") if isinstance(tag, Tag) else None
            return str(content).strip() if content else None

        canonical = soup.find("link", rel="canonical")
        url = str(canonical.get("href")) if isinstance(canonical, Tag) and canonical.get("href") else None
        title = soup.title.get_text(" ", strip=True) if soup.title else ""
        document_id = meta("supportbot:id") or source.document_id
        visibility = parse_visibility(meta("supportbot:visibility"), "meta supportbot:visibility")
        tags = parse_tags(meta("keywords"))
        # Metadata is read above: removing <head> with the other invisible parts drops it.
        for tag in soup.find_all(_INVISIBLE):
            tag.decompose()
        for tag in soup.find_all(None, attrs={"hidden": True}):
            tag.decompose()
        for tag in soup.find_all(None, attrs={"aria-hidden": "true"}):
            tag.decompose()

        sections: list[Section] = []
        stack: list[tuple[int, str]] = []
        lines: list[str] = []

        def flush() -> None:
            if lines:
                sections.append(Section(tuple(h for _, h in stack), "\n".join(lines)))
                lines.clear()

        for element in soup.find_all([*_HEADINGS, *_BLOCKS]):
            if any(parent.name in _BLOCKS for parent in element.parents):
                continue  # its text is already part of the enclosing block
            text = element.get_text(" ", strip=True)
            if not text:
                continue
            level = _HEADINGS.get(element.name)
            if level is None:
                lines.append(f"- {text}" if element.name == "li" else text)
                continue
            flush()
            if level == 1:  # the page's own title, not a section of it
                title = title or text
                stack.clear()
                continue
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
        flush()
        if not sections:
            raise LoadError("no visible text in the page body")
        return [
            Document(
                id=document_id,
                title=title or source.path.stem.replace("-", " ").capitalize(),
                source=str(source.path),
                sections=tuple(sections),
                url=url,
                visibility=visibility,
                tags=tags,
            )
        ]
