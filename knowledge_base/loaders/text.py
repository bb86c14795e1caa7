"""Plain text files: one section; the first line is the title when it looks like one."""

from __future__ import annotations

from knowledge_base.documents import Document, Section
from knowledge_base.loaders.base import SourceFile, read_text


class TextLoader:
    extensions = (".txt",)

    def load(self, source: SourceFile) -> list[Document]:
        text = read_text(source.path).strip()
        first, _, rest = text.partition("\n")
        if rest.strip() and len(first) <= 100 and not first.rstrip().endswith("."):
            title, body = first.strip(), rest.strip()
        else:
            title, body = source.path.stem.replace("-", " ").replace("_", " ").capitalize(), text
        return [Document(id=source.document_id, title=title, source=str(source.path), sections=(Section((), body),))]
