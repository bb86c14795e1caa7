"""FAQ files, CSV or JSONL: one document per question/answer pair.

Columns (CSV header or JSONL keys): question, answer (required); id, url, tags,
visibility (optional). An entry's id is FILE_ID#ID, or FILE_ID#slug-of-the-question.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable

from knowledge_base.documents import Document, Section, parse_tags, parse_visibility, slugify
from knowledge_base.loaders.base import LoadError, SourceFile, read_text

REQUIRED = ("question", "answer")
MAX_FIELD = 20_000


def _entries_to_documents(source: SourceFile, rows: Iterable[tuple[str, dict[str, object]]]) -> list[Document]:
    documents: list[Document] = []
    seen: set[str] = set()
    for where, row in rows:
        question = str(row.get("question") or "").strip()
        answer = str(row.get("answer") or "").strip()
        if not question:
            raise LoadError(f"{where}: empty question")
        if not answer:
            raise LoadError(f"{where}: empty answer")
        if len(question) > MAX_FIELD or len(answer) > MAX_FIELD:
            raise LoadError(f"{where}: question or answer longer than {MAX_FIELD} characters")
        entry = slugify(str(row.get("id") or question))
        doc_id = f"{source.document_id}#{entry}"
        if doc_id in seen:
            raise LoadError(f"{where}: duplicate entry id {entry!r} (give the entry an explicit id)")
        seen.add(doc_id)
        documents.append(
            Document(
                id=doc_id,
                title=question,
                source=str(source.path),
                sections=(Section((), f"Q: {question}\nA: {answer}"),),
                url=str(row["url"]).strip() or None if row.get("url") else None,
                visibility=parse_visibility(row.get("visibility"), where),
                tags=parse_tags(row.get("tags")),
                kind="faq",
            )
        )
    if not documents:
        raise LoadError("no FAQ entries (only a header?)")
    return documents


class FaqCsvLoader:
    extensions = (".csv",)

    def load(self, source: SourceFile) -> list[Document]:
        text = read_text(source.path)
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            missing = [c for c in REQUIRED if c not in fields]
            if missing:
                raise LoadError(f"CSV is missing column(s) {', '.join(missing)}; header has: {', '.join(fields) or '(nothing)'}")
            reader.fieldnames = fields
            rows = [(f"row {reader.line_num}", {k: v for k, v in row.items() if k}) for row in reader]
        except csv.Error as exc:
            raise LoadError(f"malformed CSV: {exc}") from None
        return _entries_to_documents(source, rows)


class FaqJsonlLoader:
    extensions = (".jsonl",)

    def load(self, source: SourceFile) -> list[Document]:
        rows: list[tuple[str, dict[str, object]]] = []
        for line_no, line in enumerate(read_text(source.path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LoadError(f"line {line_no}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise LoadError(f"line {line_no}: expected a JSON object with question and answer")
            missing = [c for c in REQUIRED if c not in row]
            if missing:
                raise LoadError(f"line {line_no}: missing key(s) {', '.join(missing)}")
            rows.append((f"line {line_no}", {str(k).lower(): v for k, v in row.items()}))
        return _entries_to_documents(source, rows)
