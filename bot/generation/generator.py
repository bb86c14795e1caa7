"""The generator: prompt text in, a stream of text deltas out, batched across requests.

`TransformersGenerator` runs the model in-process on transformers' continuous-batching
manager: one background thread steps every active request together (on a GPU in bfloat16,
on a CPU in float32), new requests join at the next step, and finished or cancelled ones
leave it at once. Callers see an async iterator per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bot.generation.model_store import load_causal_lm, resolve_generator
from bot.prompt import render_chat

log = logging.getLogger("supportbot.generation.generator")

# 64 pages of 256 tokens: 16k tokens in flight, about 600 MB for Gemma 3 270M in float32.
CPU_KV_CACHE_BLOCKS = 64
# Tokens per step: one ~800-token prompt's prefill fits.
CPU_MAX_BATCH_TOKENS = 1024
# Static engine: sequences decoded together. On a GPU a 270M model's step costs about the
# same at 1 and 128 rows; on a CPU more rows only queue behind each other.
GPU_SLOTS = 128
CPU_SLOTS = 8


class GenerationError(Exception):
    """Generation failed; the message is safe to show an operator."""


class GenerationTimeout(GenerationError):
    """The request ran past its time limit and was cancelled."""


class ContextOverflow(GenerationError):
    """The prompt plus the token budget does not fit the model's context window."""

    @classmethod
    def check(cls, prompt_tokens: int, max_new_tokens: int, context_window: int) -> None:
        if prompt_tokens + max_new_tokens > context_window:
            raise cls(
                f"prompt of {prompt_tokens} tokens plus {max_new_tokens} new tokens exceeds the {context_window}-token context"
            )


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass(slots=True)
class GenerationStats:
    """Filled in while a request streams; complete once the stream ends."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # stop, length, eos
    time_to_first_token_s: float | None = None
    total_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def mark_output(self) -> None:
        """Call when text is first handed to the caller: that moment is the time to first token."""
        if self.time_to_first_token_s is None:
            self.time_to_first_token_s = time.perf_counter() - self.started


class Generator(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def context_window(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def format_chat(self, messages: list[dict[str, str]]) -> str | None:
        """The model's chat template applied to `messages`; None for a model without one."""
        ...

    def stream(self, request: GenerationRequest, stats: GenerationStats | None = None) -> AsyncGenerator[str, None]: ...


class StopMatcher:
    """Cuts a stream at the first stop string, holding back only text that may begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""
        self.stopped = False

    def _held_suffix(self) -> int:
        """Length of the longest end of pending text that is the start of a stop string."""
        for size in range(min(len(self._pending), max((len(s) for s in self._stops), default=0)), 0, -1):
            tail = self._pending[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0

    def feed(self, delta: str) -> str:
        """The part of pending text + `delta` that is safe to emit now."""
        if self.stopped:
            return ""
        self._pending += delta
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        safe = len(self._pending) - self._held_suffix()
        out, self._pending = self._pending[:safe], self._pending[safe:]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


class IncrementalDecoder:
    """Text deltas from a growing list of token ids, decoding only a short window per step.

    Decoding the whole output on every token costs O(n) per token per stream, which at a
    hundred streams shows up on the event loop. This decodes the tokens since the last
    emitted text with a little context before them (so spaces and merges come out as
    in a full decode), and holds back a multi-byte character split across tokens.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._prefix = 0  # window start: context tokens already emitted
        self._read = 0  # tokens up to here are emitted

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def feed(self, ids: list[int], final: bool = False) -> str:
        """The new text that `ids` (all tokens so far) adds to what was returned before."""
        before = self._decode(ids[self._prefix : self._read])
        after = self._decode(ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(ids)
        return after[len(before) :]


class _Engine(Protocol):
    """What the generator needs from a batching engine running on its own thread."""

    def submit(self, request_id: str, prompt_ids: list[int], max_new_tokens: int, handler: Callable[[Any], None]) -> None: ...

    def cancel(self, request_id: str) -> None: ...

    def is_running(self) -> bool: ...

    def active_request_ids(self) -> set[str]: ...

    def stop(self, timeout: float = 30.0) -> None: ...


class _ContinuousBatching:
    """transformers' continuous-batching manager behind the `_Engine` calls.

    transformers treats an exception in a step as fatal: it fails every request it holds
    (their streams get the error at once) and its thread exits. A CUDA error or an
    out-of-memory in one step must not stop the service, so the next request after such a
    crash gets a fresh manager from `start_manager`.
    """

    def __init__(self, start_manager: Callable[[], Any]) -> None:
        self._start_manager = start_manager
        self._manager = start_manager()
        self._lock = threading.Lock()
        self._stopped = False
        self.restarts = 0

    def submit(self, request_id: str, prompt_ids: list[int], max_new_tokens: int, handler: Callable[[Any], None]) -> None:
        manager = self._running_manager()
        manager.register_result_handler(request_id, handler)
        manager.add_request(prompt_ids, request_id=request_id, max_new_tokens=max_new_tokens, streaming=True)

    def _running_manager(self) -> Any:
        with self._lock:
            if self._stopped:  # on purpose: a request racing close() must not start it again
                raise GenerationError("the generator is closed")
            # Otherwise stopping or dead means crashed: only close() stops it on purpose. The
            # failed requests hear of the crash before transformers records it, so ask whether
            # it still takes requests, not only for its error.
            status = getattr(self._manager, "background_thread_status", None)
            refuses = status.can_accept_new_requests() if status is not None else None
            if refuses is not None or not self._manager.is_running():  # wait for its thread, then replace it
                log.error("continuous batching stopped after a failed step; starting it again")
                with contextlib.suppress(Exception):
                    self._manager.stop(block=True, timeout=5)
                self._manager = self._start_manager()
                self.restarts += 1
            return self._manager

    def cancel(self, request_id: str) -> None:
        self._forget_handler(request_id)
        self._manager.cancel_request(request_id)

    def is_running(self) -> bool:
        return bool(self._running_manager().is_running())

    def active_request_ids(self) -> set[str]:
        processor = getattr(self._manager, "batch_processor", None)
        scheduler = getattr(processor, "scheduler", None)
        return set(getattr(scheduler, "active_requests", {}) or {})

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopped = True
        self._manager.stop(block=True, timeout=timeout)

    def _forget_handler(self, request_id: str) -> None:
        """Stop routing results of `request_id` to its stream's event loop.

        transformers drops a handler only when its request finishes. A request we leave
        early still has a step in flight, and posting that result to a closed event loop
        raises inside the batching thread, which would stop generation for everyone. There
        is no public call for this, hence the guarded private access.
        """
        router = getattr(self._manager, "output_router", None)
        handlers = getattr(router, "result_handlers", None)
        if router is not None and handlers is not None:
            with router._lock:
                handlers.pop(request_id, None)


class TransformersGenerator:
    """In-process generation, batched across requests; same code on CUDA and CPU.

    Two engines: `static` (ours, bot/generation/static_batching.py: fixed slots over a static KV
    cache, CUDA-graph decode steps) and `continuous` (transformers' continuous-batching
    manager with a paged cache). `auto` picks static on a GPU and continuous on a CPU,
    the faster of the two on each (docs/benchmarks.md).
    """

    def __init__(
        self,
        model: str,
        models_dir: Path,
        *,
        device: str = "auto",
        context_window: int = 4096,
        engine: str = "auto",
        slots: int | None = None,
        max_batch_tokens: int | None = None,
        kv_cache_blocks: int | None = None,
        batching_options: dict[str, Any] | None = None,
    ) -> None:
        if engine not in ("auto", "static", "continuous"):
            raise ValueError(f"engine must be auto, static or continuous, got {engine!r}")
        self._model_setting = model
        self._engine_setting = engine
        self._slots = slots
        self._batching_options = dict(batching_options or {})
        self._kv_cache_blocks = kv_cache_blocks
        self._models_dir = models_dir
        self._device_setting = device
        self._context_limit = context_window
        self._max_batch_tokens = max_batch_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self._engine: _Engine | None = None
        self._model_id = model
        self._eos: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.engine_name = engine

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def device(self) -> str:
        return str(self._model.device) if self._model is not None else self._device_setting

    @property
    def context_window(self) -> int:
        if self._model is None:
            return self._context_limit
        return min(self._context_limit, int(getattr(self._model.config, "max_position_embeddings", self._context_limit)))

    def count_tokens(self, text: str) -> int:
        self.warm_up()
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def format_chat(self, messages: list[dict[str, str]]) -> str | None:
        self.warm_up()
        return render_chat(self._tokenizer, messages)

    def warm_up(self) -> None:
        """Load (dequantizing on the very first start), start the batching thread, run one request."""
        with self._lock:
            if self._engine is not None:
                return
            if self._closed:
                # A swap or a shutdown closed it while its load was queued: a batching thread
                # started now would have no owner left to stop it, and would hold up the exit.
                raise GenerationError("the generator is closed")
            import torch
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            load_from, self._model_id = resolve_generator(self._model_setting, self._models_dir)
            device = self._device_setting
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            on_gpu = device.startswith("cuda")
            dtype = torch.bfloat16 if on_gpu else torch.float32
            model, self._tokenizer = load_causal_lm(load_from, self._models_dir, dtype)  # an adapter: onto its base
            self._model = model.to(device).eval()
            self._eos = _as_set(self._model.generation_config.eos_token_id or self._tokenizer.eos_token_id)
            self.engine_name = self._engine_setting if self._engine_setting != "auto" else ("static" if on_gpu else "continuous")
            self._engine = self._start_static(on_gpu) if self.engine_name == "static" else self._start_continuous(on_gpu)
            log.info("generator %s on %s (%s), %s batching, ready", self._model_id, device, dtype, self.engine_name)
        # The first request pays one-off set-up (seconds on a CPU); pay it here instead of
        # in a user's time to first token.
        _run_coroutine_in_thread(self._drain(GenerationRequest("Hello", max_new_tokens=2, timeout_s=300)))

    def _start_static(self, on_gpu: bool) -> _Engine:
        from bot.generation.static_batching import StaticBatchEngine

        engine = StaticBatchEngine(
            self._model,
            slots=self._slots or (GPU_SLOTS if on_gpu else CPU_SLOTS),
            max_len=self.context_window,
            eos_token_ids=self._eos,
            use_cuda_graphs=self._batching_options.get("use_cuda_graph"),
            prefill_tokens=self._max_batch_tokens or (8192 if on_gpu else CPU_MAX_BATCH_TOKENS),
        )
        engine.start()
        return engine

    def _start_continuous(self, on_gpu: bool) -> _Engine:
        from transformers import GenerationConfig
        from transformers.generation import ContinuousBatchingConfig

        config = GenerationConfig(
            max_new_tokens=256, do_sample=False, eos_token_id=sorted(self._eos), pad_token_id=self._tokenizer.pad_token_id
        )
        # transformers sizes the paged KV cache and the step buffers from free memory. On
        # a GPU that is the point; on a CPU it is the whole machine's RAM (a 13 GB process
        # was seen here), so CPUs get fixed sizes unless configured: 3.1 GB peak RSS in
        # all, at the same tokens/s.

        # With the sizes fixed, transformers still checks them against 60 % of the NUMA node's
        # RAM less this process's RSS. After a failed step the engine restarts while the old
        # cache is still counted in the RSS, and a test process that had loaded several models
        # failed that check (3.4 GB asked, 2.85 GB "available" on a 24 GB machine): on a CPU
        # the whole of what is left counts, unless configured.
        options = dict(self._batching_options)
        if not on_gpu:
            options.setdefault("max_memory_percent", 1.0)

        def start_manager() -> Any:
            # A new config each time: a manager writes the sizes it chose back into its config.
            cb_config = ContinuousBatchingConfig(
                num_blocks=self._kv_cache_blocks or (None if on_gpu else CPU_KV_CACHE_BLOCKS),
                max_batch_tokens=self._max_batch_tokens or (None if on_gpu else CPU_MAX_BATCH_TOKENS),
                **options,
            )
            manager = self._model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config)
            if on_gpu:
                manager.warmup()  # capture CUDA graphs now, not during users' first requests
            manager.start()
            return manager

        return _ContinuousBatching(start_manager)

    async def _drain(self, request: GenerationRequest) -> None:
        async for _ in self.stream(request):
            pass

    def close(self) -> None:
        """Stop the batching thread for good. Called while `warm_up` loads, it waits for the
        load and stops what it started; called before, the load never starts."""
        with self._lock:
            self._closed = True
            if self._engine is not None:
                self._engine.stop(timeout=30)
                self._engine = None

    def active_request_ids(self) -> set[str]:
        """Requests the batching thread is working on now (for tests and metrics)."""
        return self._engine.active_request_ids() if self._engine is not None else set()

    async def stream(self, request: GenerationRequest, stats: GenerationStats | None = None) -> AsyncGenerator[str, None]:
        """Text deltas as tokens are produced; stops at a stop string, EOS or the budget.

        Leaving the iteration early (the user pressed stop, the socket closed, the task was
        cancelled) cancels the request, which frees its batch slot within one decode step.
        """
        if self._engine is None:
            await asyncio.to_thread(self.warm_up)
        engine = self._engine
        if engine is None:
            raise GenerationError("the generator is closed")
        stats = stats or GenerationStats()
        prompt_ids = self._tokenizer.encode(request.prompt)
        stats.prompt_tokens = len(prompt_ids)
        ContextOverflow.check(len(prompt_ids), request.max_new_tokens, self.context_window)
        if not engine.is_running():
            raise GenerationError("the generation thread is not running")
        request_id = f"gen-{uuid.uuid4().hex}"
        results: asyncio.Queue[Any] = asyncio.Queue()
        engine.submit(request_id, prompt_ids, request.max_new_tokens, results.put_nowait)
        matcher = StopMatcher(request.stop)
        decoder = IncrementalDecoder(self._tokenizer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout_s
        finished = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise GenerationTimeout(f"generation took longer than {request.timeout_s:g} s")
                try:
                    result = await asyncio.wait_for(results.get(), remaining)
                except TimeoutError:
                    raise GenerationTimeout(f"generation took longer than {request.timeout_s:g} s") from None
                if result.error:
                    finished = True
                    raise GenerationError(f"generation failed: {result.error}")
                tokens = list(result.generated_tokens)
                stats.completion_tokens = len(tokens)
                emit = matcher.feed(decoder.feed(tokens, final=result.is_finished()))
                if emit:
                    stats.mark_output()
                    yield emit
                if matcher.stopped:
                    stats.finish_reason = "stop"
                    break
                if result.is_finished():
                    finished = True
                    tail = matcher.flush()
                    if tail:
                        yield tail
                    stats.finish_reason = "eos" if tokens and tokens[-1] in self._eos else "length"
                    break
        finally:
            if not finished:
                engine.cancel(request_id)
            stats.total_s = time.perf_counter() - stats.started


def _run_coroutine_in_thread(coroutine: Any) -> None:
    """Run a coroutine to completion from sync code, whether or not this thread has a loop."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="generator-warm-up")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _as_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)
