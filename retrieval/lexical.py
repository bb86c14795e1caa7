"""BM25 over chunk texts (bm25s), so product names, error codes and SKUs match exactly."""

from __future__ import annotations

import re

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

# A word, or a code made of word parts joined by - _ . / (E-1042, BRW-K2, v2.3.1).
_TOKEN = re.compile(r"[a-z0-9]+(?:[-_./][a-z0-9]+)*")
STOPWORDS = frozenset(STOPWORDS_EN) | {"i", "my", "me", "you", "your", "can", "do", "does", "how", "what", "why"}


class LexicalTokenizer:
    """Lower-cases, stems words, and keeps codes whole as well as in parts.

    "Error E-1042 on BRW-K2" gives e-1042, e, 1042, brw-k2, brw, k2 and "error": a query for
    the exact code matches the compound token, a query for "1042" still matches the part.
    """

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for match in _TOKEN.finditer(text.lower()):
            token = match.group()
            if token in STOPWORDS:
                continue
            if any(sep in token for sep in "-_./"):
                tokens.append(token)
                tokens.extend(part for part in re.split(r"[-_./]", token) if part and part not in STOPWORDS)
            else:
                tokens.append(self._stemmer.stemWord(token))
        return tokens


class LexicalIndex:
    """BM25 scores over rows 0..n-1 of the chunk table."""

    def __init__(self, texts: list[str], tokenizer: LexicalTokenizer | None = None) -> None:
        self._tokenizer = tokenizer or LexicalTokenizer()
        self._size = len(texts)
        self._bm25 = bm25s.BM25()
        if texts:
            self._bm25.index([self._tokenizer.tokenize(t) or ["\x00empty"] for t in texts], show_progress=False)

    @property
    def size(self) -> int:
        return self._size

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) with a positive score; `allowed` is a boolean row mask."""
        tokens = self._tokenizer.tokenize(query)
        if not tokens or self._size == 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        weight_mask = allowed.astype(np.float32) if allowed is not None else None
        rows, scores = self._bm25.retrieve(
            [tokens], k=min(k, self._size), show_progress=False, weight_mask=weight_mask, n_threads=1
        )
        rows, scores = rows[0].astype(np.int64), scores[0].astype(np.float32)
        keep = scores > 0
        return scores[keep], rows[keep]
