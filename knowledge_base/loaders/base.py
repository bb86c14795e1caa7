"""What every loader shares: the Loader protocol, errors, and safe text decoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from knowledge_base.documents import Document, LoadError

__all__ = ["LoadError", "Loader", "SourceFile", "read_bytes", "read_text"]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to load, and the id its documents get unless the file names its own."""

    path: Path
    document_id: str


class Loader(Protocol):
    @property
    def extensions(self) -> tuple[str, ...]: ...

    def load(self, source: SourceFile) -> list[Document]: ...


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except PermissionError:
        raise LoadError("permission denied: the file is not readable") from None
    except IsADirectoryError:
        raise LoadError("is a directory, not a file") from None
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from None
    if not data.strip():
        raise LoadError("file is empty")
    return data


def read_text(path: Path) -> str:
    """UTF-8 text (a BOM is allowed); binary content or another encoding is refused."""
    data = read_bytes(path)
    if b"\x00" in data[:8192]:
        raise LoadError("binary content (NUL bytes), not a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(
            f"not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}; re-save the file as UTF-8"
        ) from None
    printable = sum(ch.isprintable() or ch.isspace() for ch in text[:8192])
    if printable < 0.9 * min(len(text), 8192):
        raise LoadError("binary content (mostly unprintable characters), not a text file")
    if not text.strip():
        raise LoadError("file has no text")
    return text
