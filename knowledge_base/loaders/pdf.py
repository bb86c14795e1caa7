"""PDF files via pypdf: the text layer of every page, one section per page."""

from __future__ import annotations

import io
import logging

from pypdf import PdfReader
from pypdf.errors import PdfReadError

from knowledge_base.documents import Document, Section
from knowledge_base.loaders.base import LoadError, SourceFile, read_bytes


class PdfLoader:
    extensions = (".pdf",)

    def load(self, source: SourceFile) -> list[Document]:
        data = read_bytes(source.path)
        if not data.startswith(b"%PDF-"):
            raise LoadError("not a PDF file (missing %PDF- header)")
        logging.getLogger("pypdf").setLevel(logging.ERROR)
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                raise LoadError("PDF is encrypted; export an unencrypted copy")
            pages = [(page.extract_text() or "").strip() for page in reader.pages]
            info_title = (reader.metadata.title if reader.metadata else None) or ""
        except LoadError:
            raise
        except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
            raise LoadError(f"broken PDF: {exc}") from None
        sections = tuple(
            Section((f"Page {number}",) if len(pages) > 1 else (), text) for number, text in enumerate(pages, start=1) if text
        )
        if not sections:
            raise LoadError("PDF has no extractable text (scanned images need OCR first)")
        title = str(info_title).strip() or sections[0].text.split("\n", 1)[0].strip()[:100]
        return [Document(id=source.document_id, title=title, source=str(source.path), sections=sections)]
