"""The real bundled Gemma 3 270M through the real batching threads; generations stay short.

Behaviour every engine must have runs against both: transformers' continuous batching
(the CPU default) and our static-slot engine (the GPU default)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.generation.generator import (
    ContextOverflow,
    GenerationError,
    GenerationRequest,
    GenerationStats,
    GenerationTimeout,
    IncrementalDecoder,
    StopMatcher,
    TransformersGenerator,
)

PROMPT = "Question: How do I descale my kettle?\nAnswer:"


@pytest.fixture(params=["continuous", "static"])
def any_generator(request: pytest.FixtureRequest) -> TransformersGenerator:
    name = "generator" if request.param == "continuous" else "static_generator"
    generator: TransformersGenerator = request.getfixturevalue(name)
    assert generator.engine_name == request.param
    return generator


async def collect(generator: TransformersGenerator, request: GenerationRequest) -> tuple[list[str], GenerationStats]:
    stats = GenerationStats()
    return [delta async for delta in generator.stream(request, stats)], stats


def test_stop_matcher_holds_back_partial_matches() -> None:
    matcher = StopMatcher(("\nUser:",))
    assert matcher.feed("Hello") == "Hello"
    assert matcher.feed(" there\nUs") == " there"
    assert matcher.feed("er: next") == ""
    assert matcher.stopped and matcher.flush() == ""
    plain = StopMatcher(())
    assert plain.feed("abc") == "abc" and plain.flush() == ""


def test_incremental_decoding_matches_a_full_decode(generator: TransformersGenerator) -> None:
    tokenizer = generator._tokenizer
    text = "Descale monthly ☕ — café crème, 2 × 250 ml.\n  Error E-1042: 🔌 check the base. 日本語も"
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.feed(ids[: n + 1], final=n + 1 == len(ids)) for n in range(len(ids))]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in d for d in deltas)  # split characters are held back, never shown half


def test_streams_deltas_up_to_the_budget(any_generator: TransformersGenerator) -> None:
    deltas, stats = asyncio.run(collect(any_generator, GenerationRequest(PROMPT, max_new_tokens=12)))
    assert len(deltas) > 1 and "".join(deltas).strip()
    assert stats.completion_tokens == 12 and stats.finish_reason == "length"
    assert stats.prompt_tokens == any_generator.count_tokens(PROMPT) + 1  # plus BOS
    assert stats.time_to_first_token_s is not None and 0 < stats.time_to_first_token_s <= stats.total_s
    assert any_generator.model_id.startswith("google/gemma-3-270m")


def test_stop_string_ends_the_answer(any_generator: TransformersGenerator) -> None:
    deltas, stats = asyncio.run(collect(any_generator, GenerationRequest(PROMPT, max_new_tokens=40, stop=(" ",))))
    text = "".join(deltas)
    assert stats.finish_reason == "stop" and " " not in text


def test_concurrent_requests_are_served_together(any_generator: TransformersGenerator) -> None:
    async def many() -> list[tuple[list[str], GenerationStats]]:
        requests = [GenerationRequest(f"Question: what does error E-10{i} mean?\nAnswer:", max_new_tokens=8) for i in range(4)]
        return await asyncio.gather(*(collect(any_generator, r) for r in requests))

    results = asyncio.run(many())
    assert [stats.completion_tokens for _, stats in results] == [8, 8, 8, 8]


def test_leaving_the_stream_frees_the_slot(any_generator: TransformersGenerator) -> None:
    async def leave_early() -> None:
        stream = any_generator.stream(GenerationRequest(PROMPT, max_new_tokens=200))
        async for _ in stream:
            break
        await stream.aclose()  # what `async for ... break` in a cancelled task does
        for _ in range(50):  # a decode step is about 0.1 s on 2 cores
            if not any_generator.active_request_ids():
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"requests still active: {any_generator.active_request_ids()}")

    asyncio.run(leave_early())


def test_timeout_cancels_the_request(any_generator: TransformersGenerator) -> None:
    with pytest.raises(GenerationTimeout, match="longer than 0.3 s"):
        asyncio.run(collect(any_generator, GenerationRequest(PROMPT, max_new_tokens=400, timeout_s=0.3)))


def test_prompt_too_long_for_the_context(any_generator: TransformersGenerator) -> None:
    with pytest.raises(ContextOverflow, match="exceeds the 1024-token context"):
        asyncio.run(collect(any_generator, GenerationRequest("word " * 1100, max_new_tokens=8)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"timeout_s": 0}, "timeout_s"), ({"stop": ("",)}, "stop strings")],
)
def test_bad_requests_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GenerationRequest("x", **kwargs)  # type: ignore[arg-type]


def test_a_stream_left_early_on_a_closed_loop_does_not_stop_generation(any_generator: TransformersGenerator) -> None:
    """Regression: a result posted to a closed event loop used to kill the batching thread."""

    async def first_delta_only() -> None:
        async for _ in any_generator.stream(GenerationRequest(PROMPT, max_new_tokens=50)):
            break

    asyncio.run(first_delta_only())  # this loop closes while a decode step is still in flight
    deltas, stats = asyncio.run(collect(any_generator, GenerationRequest(PROMPT, max_new_tokens=6)))
    assert stats.completion_tokens == 6 and deltas


def test_the_engine_restarted_after_a_failed_step_is_sized_against_what_the_machine_has_left(
    generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart after a failed step sizes a new cache while the old one still counts in this
    process's RSS; transformers allowed a CPU only 60 % of what was left, and a test process that
    had loaded several models was refused (3.4 GB asked, 2.85 GB "available"). The machine is
    made to report 4 GiB left beyond this process: the fixed CPU sizes fit, so it answers."""
    import psutil
    import torch
    from transformers.generation.continuous_batching import cache

    _break_one_step(generator, monkeypatch, 1)
    with pytest.raises(GenerationError, match="injected device fault"):
        asyncio.run(collect(generator, GenerationRequest(PROMPT, max_new_tokens=4, timeout_s=120)))
    monkeypatch.undo()

    def little_left() -> tuple[torch.device, int, int, int]:
        rss = psutil.Process().memory_info().rss
        return torch.device("cpu"), rss + 4 * 1024**3, rss, rss

    monkeypatch.setattr(cache, "get_device_and_memory_breakdown", little_left)
    deltas, stats = asyncio.run(collect(generator, GenerationRequest(PROMPT, max_new_tokens=4)))
    assert stats.completion_tokens == 4 and "".join(deltas).strip()


def _break_one_step(generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch, failing_call: int) -> None:
    """Make the engine's `failing_call`-th forward pass from now raise (1: the prefill)."""
    calls = {"n": 0}

    def wrap(real):  # type: ignore[no-untyped-def]
        def step(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == failing_call:
                raise RuntimeError("injected device fault")
            return real(*args, **kwargs)

        return step

    engine = generator._engine
    if generator.engine_name == "static":
        monkeypatch.setattr(engine, "_prefill_step", wrap(engine._prefill_step))  # type: ignore[union-attr]
        monkeypatch.setattr(engine, "_decode_step", wrap(engine._decode_step))  # type: ignore[union-attr]
    else:
        runner = engine._manager.batch_processor.model_runner  # type: ignore[union-attr]
        monkeypatch.setattr(runner, "compute_batch", wrap(runner.compute_batch))


@pytest.mark.parametrize(("phase", "failing_call"), [("prefill", 1), ("decode", 3)])
def test_a_failed_step_fails_its_request_at_once_and_the_next_is_answered(
    any_generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch, phase: str, failing_call: int
) -> None:
    _break_one_step(any_generator, monkeypatch, failing_call)
    started = time.perf_counter()
    with pytest.raises(GenerationError, match="injected device fault"):
        asyncio.run(collect(any_generator, GenerationRequest(PROMPT, max_new_tokens=20, timeout_s=120)))
    assert time.perf_counter() - started < 1.5, f"a failed {phase} step took its request this long to fail"
    monkeypatch.undo()
    deltas, stats = asyncio.run(collect(any_generator, GenerationRequest(PROMPT, max_new_tokens=4)))
    assert stats.completion_tokens == 4 and "".join(deltas).strip()
