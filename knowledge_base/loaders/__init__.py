"""Loaders by file extension, and the walk that turns paths into source files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from knowledge_base.documents import Document
from knowledge_base.loaders.base import Loader, LoadError, SourceFile
from knowledge_base.loaders.faq import FaqCsvLoader, FaqJsonlLoader
from knowledge_base.loaders.html import HtmlLoader
from knowledge_base.loaders.markdown import MarkdownLoader
from knowledge_base.loaders.pdf import PdfLoader
from knowledge_base.loaders.text import TextLoader

LOADERS: tuple[Loader, ...] = (MarkdownLoader(), HtmlLoader(), TextLoader(), PdfLoader(), FaqCsvLoader(), FaqJsonlLoader())
_BY_EXTENSION: dict[str, Loader] = {ext: loader for loader in LOADERS for ext in loader.extensions}
SUPPORTED_EXTENSIONS = tuple(sorted(_BY_EXTENSION))

__all__ = ["LOADERS", "SUPPORTED_EXTENSIONS", "LoadError", "SourceFile", "discover", "load_file"]


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a walk over the ingest paths found."""

    files: list[SourceFile]
    errors: dict[str, str]
    roots: list[Path]  # folders given: documents from under them that are gone get removed


def load_file(source: SourceFile) -> list[Document]:
    loader = _BY_EXTENSION.get(source.path.suffix.lower())
    if loader is None:
        raise LoadError(
            f"unsupported file type {source.path.suffix or '(no extension)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return loader.load(source)


def _document_id(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def discover(paths: list[Path]) -> Discovery:
    """Files to ingest under `paths`. A folder's ids are paths relative to it; hidden files are skipped."""
    files: list[SourceFile] = []
    errors: dict[str, str] = {}
    roots: list[Path] = []
    for given in paths:
        path = given.expanduser().resolve()
        if path.is_dir():
            roots.append(path)
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path)
                if any(part.startswith(".") for part in relative.parts) or not child.is_file():
                    continue
                if child.suffix.lower() not in _BY_EXTENSION:
                    errors[str(child)] = f"unsupported file type {child.suffix or '(no extension)'!r}; skipped"
                    continue
                files.append(SourceFile(child, _document_id(child, path)))
        elif path.is_file():
            files.append(SourceFile(path, path.stem))
        else:
            errors[str(path)] = "no such file or folder"
    return Discovery(files, errors, roots)
