"""Our static-slot engine against transformers' own greedy `generate`, on the real model.

On a CPU the engine runs eagerly; on a GPU the same steps replay as CUDA graphs (checked on
an H100 with bench/generation.py and a generate comparison, see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import torch

from bot.generation.generator import GenerationError, GenerationRequest, GenerationStats, TransformersGenerator

# The long prompt is past Gemma 3's 512-token sliding window, so windowed layers must mask.
LONG = (
    "Descaling guide. "
    + " ".join(f"Step {i}: rinse the kettle and check the filter." for i in range(60))
    + "\nQuestion: what is step 7?\nAnswer:"
)
PROMPTS = [
    "Question: How do I descale my kettle?\nAnswer:",
    "Hi",
    LONG,
    "Question: what does error E-1042 mean on the Brewlo kettle base?\nAnswer:",
    "The capital of France is",
]


async def answer(generator: TransformersGenerator, prompt: str, tokens: int) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    text = "".join([d async for d in generator.stream(GenerationRequest(prompt, max_new_tokens=tokens), stats)])
    return text, stats


def test_same_tokens_as_generate_with_more_requests_than_slots(static_generator: TransformersGenerator) -> None:
    async def together() -> list[tuple[str, GenerationStats]]:
        return await asyncio.gather(*(answer(static_generator, p, 10) for p in PROMPTS))

    results = asyncio.run(together())  # five requests, two slots: three wait their turn
    tokenizer, model = static_generator._tokenizer, static_generator._model
    assert tokenizer.encode(LONG).__len__() > model.config.sliding_window
    for prompt, (text, stats) in zip(PROMPTS, results, strict=True):
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            reference = model.generate(**inputs, max_new_tokens=10, do_sample=False)
        expected = tokenizer.decode(reference[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert text == expected, prompt[:40]
        assert stats.completion_tokens == 10 and stats.finish_reason == "length"


def test_a_failing_step_fails_its_requests_and_the_engine_recovers(
    static_generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = static_generator._engine
    real_step = engine._decode_step  # type: ignore[union-attr]
    calls = {"n": 0}

    def broken_once(rows: int, length: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected device fault")
        real_step(rows, length)

    monkeypatch.setattr(engine, "_decode_step", broken_once)
    with pytest.raises(GenerationError, match="RuntimeError: injected device fault"):
        asyncio.run(answer(static_generator, PROMPTS[0], 8))
    assert static_generator.active_request_ids() == set()
    text, stats = asyncio.run(answer(static_generator, PROMPTS[0], 4))
    assert stats.completion_tokens == 4 and text


def test_requests_waiting_for_a_slot_can_be_cancelled(static_generator: TransformersGenerator) -> None:
    engine = static_generator._engine

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(100):
            if condition():
                return
            await asyncio.sleep(0.02)
        pytest.fail("condition not reached in 2 s")

    async def crowd() -> None:
        long_runs = [asyncio.create_task(answer(static_generator, PROMPTS[3], 200)) for _ in range(2)]
        await until(lambda: len(engine._active) == 2)  # type: ignore[union-attr]
        waiting = asyncio.create_task(answer(static_generator, PROMPTS[1], 40))
        await until(lambda: len(engine._waiting) == 1)  # type: ignore[union-attr]
        waiting.cancel()
        for task in long_runs:
            task.cancel()
        await asyncio.gather(waiting, *long_runs, return_exceptions=True)
        for _ in range(40):
            if not static_generator.active_request_ids():
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"still active: {static_generator.active_request_ids()}")

    asyncio.run(crowd())
