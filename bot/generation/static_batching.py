"""Our own batching engine: a fixed set of sequence slots over a static KV cache.

Why it exists: transformers' continuous-batching manager spends tens of milliseconds of
Python per step when no flash-attention kernel is installed, which capped a Gemma-3-270M
on an H100 at about 2,000 tokens/s for 128 streams (docs/benchmarks.md). A small model's
decode step is a few hundred microseconds of GPU work, so the step has to be one CUDA
graph replay and the host must do almost nothing per token. This engine does that:

- Every slot owns one row of a preallocated KV buffer per layer, [slots, kv_heads,
  max_len, head_dim]. A decode step runs all slots at once: one token per row, each row
  at its own position, attention masked per row (causal, and windowed on sliding layers).
- Decode steps are captured as CUDA graphs, one per (rows, kv length) bucket, so a step
  with 3 active slots at position 300 reads only 4 rows and 512 positions of cache. Slots
  are handed out lowest-first, so the active rows stay packed at the front.
- New requests are prefilled together, right-padded, in one eager forward between decode
  steps; a request's first token comes from its prefill, so time to first token is one
  prefill plus the wait for the current step.
- Finished or cancelled requests leave their slot before the next step.

On a CPU the same code runs eagerly (no graphs). Greedy decoding only, which is what the
assistant uses. Works for decoder models whose forward takes precomputed 4-D masks
(a per-layer-type mapping when the config has `layer_types`, as Gemma 3 does).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("supportbot.generation.static_batching")

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LENGTH_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
PREFILL_WIDTHS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(slots=True)
class TokenUpdate:
    """What a request's handler receives: every token so far, whether it is done, or an error."""

    generated_tokens: list[int]
    finished: bool = False
    error: str | None = None

    def is_finished(self) -> bool:
        return self.finished


@dataclass(slots=True)
class _Request:
    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    handler: Callable[[TokenUpdate], None]
    loop: asyncio.AbstractEventLoop
    generated: list[int] = field(default_factory=list)
    slot: int = -1


class _SlotCache:
    """Duck-typed KV cache for the model's attention layers: writes new keys and values into
    the slots' rows, returns what attention should read."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys, self.values = keys, values
        self.mode = "decode"
        self.rows = 1  # decode: how many leading slots run
        self.length = 1  # decode: how many cache positions attention reads
        self.positions: torch.Tensor | None = None  # decode: [rows] position of each row's token
        self.slots: torch.Tensor | None = None  # prefill: [batch] slot of each row

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, ...]:
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        if self.mode == "prefill":
            assert self.slots is not None
            steps = torch.arange(key.shape[2], device=key.device)
            index = (self.slots[:, None], slice(None), steps[None, :])
            k_buf[index] = key.transpose(1, 2).to(k_buf.dtype)
            v_buf[index] = value.transpose(1, 2).to(v_buf.dtype)
            return key, value  # a prefill starts at position 0: it attends to itself only
        assert self.positions is not None
        rows = torch.arange(self.rows, device=key.device)
        k_buf[rows, :, self.positions] = key[:, :, 0].to(k_buf.dtype)
        v_buf[rows, :, self.positions] = value[:, :, 0].to(v_buf.dtype)
        return k_buf[: self.rows, :, : self.length], v_buf[: self.rows, :, : self.length]

    # Parts of transformers' Cache interface that models may consult.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def is_compileable(self) -> bool:
        return False


class StaticBatchEngine:
    """Runs greedy generation for up to `slots` requests at once on a background thread."""

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        max_len: int,
        eos_token_ids: set[int],
        use_cuda_graphs: bool | None = None,
        prefill_tokens: int = 8192,
    ) -> None:
        config = model.config.get_text_config()
        self._model = model
        self._slots = slots
        self._max_len = max_len
        self._eos = eos_token_ids
        self._prefill_tokens = prefill_tokens
        self._device = model.device
        self._graphs_on = self._device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self._layer_types: list[str] | None = getattr(config, "layer_types", None)
        self._window: int | None = getattr(config, "sliding_window", None)
        # transformers 5.24 renamed the decoder's `past_key_values` argument to `cache` (the old
        # name warns and goes in 5.40); pass whichever this version's forward declares.
        self._cache_argument = "cache" if "cache" in inspect.signature(model.model.forward).parameters else "past_key_values"
        if model.config._attn_implementation != "sdpa":
            model.set_attn_implementation("sdpa")  # boolean 4-D masks; eager wants additive ones
        kv_heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        # One extra row: the scratch slot that padding rows of a bucketed prefill write into.
        shape = (slots + 1, kv_heads, max_len, head_dim)
        dtype = model.dtype
        layers = config.num_hidden_layers
        self._cache = _SlotCache(
            [torch.zeros(shape, dtype=dtype, device=self._device) for _ in range(layers)],
            [torch.zeros(shape, dtype=dtype, device=self._device) for _ in range(layers)],
        )
        self._tokens = torch.zeros((slots + 1, 1), dtype=torch.long, device=self._device)
        self._positions = torch.zeros(slots + 1, dtype=torch.long, device=self._device)
        self._next = torch.zeros(slots, dtype=torch.long, device=self._device)
        # Prefill inputs and outputs, fixed buffers so prefills can be graph replays too.
        widest = max_len
        self._prefill_ids = torch.zeros((slots, widest), dtype=torch.long, device=self._device)
        self._prefill_slots = torch.zeros(slots, dtype=torch.long, device=self._device)
        self._prefill_last = torch.zeros(slots, dtype=torch.long, device=self._device)
        self._prefill_out = torch.zeros(slots, dtype=torch.long, device=self._device)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._prefill_graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool: Any = None
        self._active: dict[int, _Request] = {}  # slot -> request
        self._waiting: deque[_Request] = deque()
        self._prefilling: list[_Request] = []  # taken from the queue, prefill not yet done
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ------------------------------------------------------------------ public, any thread
    def start(self) -> None:
        if self._graphs_on:
            self._capture_graphs()
        self._thread = threading.Thread(target=self._run, name="static-batching", daemon=True)
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request_id: str, prompt_ids: list[int], max_new_tokens: int, handler: Callable[[TokenUpdate], None]) -> None:
        """Queue a request; `handler` is called on the caller's event loop with each update."""
        if len(prompt_ids) + max_new_tokens > self._max_len:
            raise ValueError(f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed the {self._max_len}-token slots")
        request = _Request(request_id, list(prompt_ids), max_new_tokens, handler, asyncio.get_running_loop())
        with self._lock:
            self._waiting.append(request)
        self._wake.set()

    def cancel(self, request_id: str) -> None:
        """The request leaves its slot before the next decode step."""
        with self._lock:
            self._cancelled.add(request_id)
        self._wake.set()

    def active_request_ids(self) -> set[str]:
        with self._lock:
            return {r.request_id for r in self._active.values()} | {r.request_id for r in self._waiting}

    # ------------------------------------------------------------------ the batching thread
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopping:
                self._drop_cancelled()
                if not self._active and not self._waiting:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                # A broken step fails the requests it held, at once, never the thread: the
                # others (still waiting, or decoding when a prefill broke) carry on.
                try:
                    self._admit()
                except Exception as exc:
                    log.exception("prefill step failed")
                    self._fail_prefilling(f"{type(exc).__name__}: {exc}")
                try:
                    if self._active:
                        self._decode()
                except Exception as exc:
                    log.exception("decode step failed")
                    self._fail_active(f"{type(exc).__name__}: {exc}")
        self._fail_all("the generator is shutting down")

    def _drop_cancelled(self) -> None:
        with self._lock:
            if not self._cancelled:
                return
            cancelled, self._cancelled = self._cancelled, set()
            self._waiting = deque(r for r in self._waiting if r.request_id not in cancelled)
            for slot in [s for s, r in self._active.items() if r.request_id in cancelled]:
                del self._active[slot]

    def _fail_all(self, message: str) -> None:
        with self._lock:
            failed = list(self._active.values()) + list(self._waiting) + self._prefilling
            self._active.clear()
            self._waiting.clear()
            self._prefilling = []
        self._fail(failed, message)

    def _fail_prefilling(self, message: str) -> None:
        """The batch whose prefill raised: it left the queue but never reached a slot."""
        with self._lock:
            failed, self._prefilling = self._prefilling, []
        self._fail(failed, message)

    def _fail_active(self, message: str) -> None:
        with self._lock:
            failed = list(self._active.values())
            self._active.clear()
        self._fail(failed, message)

    def _fail(self, requests: list[_Request], message: str) -> None:
        self._deliver([(r, TokenUpdate(list(r.generated), True, message)) for r in requests])

    def _admit(self) -> None:
        """Prefill as many waiting requests as there are free slots and prefill budget."""
        with self._lock:
            free = [s for s in range(self._slots) if s not in self._active]
            batch: list[_Request] = []
            while self._waiting and len(batch) < len(free):
                longest = max([len(r.prompt_ids) for r in batch] + [len(self._waiting[0].prompt_ids)])
                rows, width = self._prefill_shape(len(batch) + 1, longest)
                if batch and rows * width > self._prefill_tokens:
                    break
                batch.append(self._waiting.popleft())
            self._prefilling = batch
        if not batch:
            return
        for request, slot in zip(batch, free, strict=False):
            request.slot = slot
        first = self._prefill(batch)
        updates = []
        with self._lock:
            for request, token in zip(batch, first, strict=True):
                request.generated.append(token)
                done = token in self._eos or len(request.generated) >= request.max_new_tokens
                if not done:
                    self._active[request.slot] = request
                updates.append((request, TokenUpdate(list(request.generated), done)))
            self._prefilling = []
        self._deliver(updates)

    def _prefill_shape(self, rows: int, width: int) -> tuple[int, int]:
        """The padded (rows, width) a prefill runs at: a captured bucket, or exact when eager."""
        if not self._graphs_on:
            return rows, width
        bucket = (next((b for b in ROW_BUCKETS if b >= rows), rows), next((b for b in PREFILL_WIDTHS if b >= width), width))
        return bucket if bucket in self._prefill_graphs else (rows, width)

    def _prefill(self, batch: list[_Request]) -> list[int]:
        lengths = [len(r.prompt_ids) for r in batch]
        rows, width = self._prefill_shape(len(batch), max(lengths))
        ids = torch.zeros((rows, width), dtype=torch.long)
        for row, request in enumerate(batch):
            ids[row, : lengths[row]] = torch.tensor(request.prompt_ids)
        padding = rows - len(batch)
        slots = [r.slot for r in batch] + [self._slots] * padding  # padding rows write the scratch slot
        self._prefill_ids[:rows, :width].copy_(ids)
        self._prefill_slots[:rows].copy_(torch.tensor(slots))
        self._prefill_last[:rows].copy_(torch.tensor([n - 1 for n in lengths] + [0] * padding))
        graph = self._prefill_graphs.get((rows, width))
        if graph is not None:
            graph.replay()
        else:
            self._prefill_step(rows, width)
        return [int(t) for t in self._prefill_out[: len(batch)].tolist()]

    def _prefill_step(self, rows: int, width: int) -> None:
        """Prompts of the first `rows` prefill rows into their slots, first tokens out (capturable)."""
        steps = torch.arange(width, device=self._device)
        causal = steps[None, :] <= steps[:, None]  # [query, key]; right padding needs no mask
        masks = {"full_attention": causal}
        if self._window:
            masks["sliding_attention"] = causal & (steps[:, None] - steps[None, :] < self._window)
        expanded = {name: m[None, None].expand(rows, 1, width, width) for name, m in masks.items()}
        cache = self._cache
        slots, last = self._prefill_slots[:rows], self._prefill_last[:rows]
        cache.mode, cache.slots = "prefill", slots
        out = self._model.model(
            input_ids=self._prefill_ids[:rows, :width],
            position_ids=steps[None, :].expand(rows, width),
            attention_mask=self._mask_argument(expanded),
            use_cache=True,
            **{self._cache_argument: cache},
        )
        hidden = out.last_hidden_state[torch.arange(rows, device=self._device), last]
        first = self._model.lm_head(hidden).argmax(-1)
        self._prefill_out[:rows].copy_(first)
        self._tokens[slots, 0] = first
        self._positions[slots] = last + 1

    def _mask_argument(self, masks: dict[str, torch.Tensor]) -> Any:
        if self._layer_types is None:
            return masks["full_attention"]
        return {kind: masks.get(kind, masks["full_attention"]) for kind in set(self._layer_types)}

    def _decode_step(self, rows: int, length: int) -> None:
        """One token for each of the first `rows` slots; everything on the device (capturable)."""
        cache = self._cache
        cache.mode, cache.rows, cache.length = "decode", rows, length
        positions = self._positions[:rows]
        cache.positions = positions
        keys = torch.arange(length, device=self._device)
        causal = keys[None, :] <= positions[:, None]  # [rows, key]
        masks = {"full_attention": causal[:, None, None, :]}
        if self._window:
            masks["sliding_attention"] = (causal & (keys[None, :] > positions[:, None] - self._window))[:, None, None, :]
        out = self._model.model(
            input_ids=self._tokens[:rows],
            position_ids=positions[:, None],
            attention_mask=self._mask_argument(masks),
            use_cache=True,
            **{self._cache_argument: cache},
        )
        nxt = self._model.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
        self._next[:rows].copy_(nxt)
        self._tokens[:rows, 0].copy_(nxt)
        self._positions[:rows].add_(1).clamp_(max=self._max_len - 1)

    def _buckets(self, rows: int, length: int) -> tuple[int, int]:
        row_bucket = next((b for b in ROW_BUCKETS if b >= rows), self._slots)
        length_bucket = next((b for b in LENGTH_BUCKETS if b >= length), self._max_len)
        return min(row_bucket, self._slots), min(length_bucket, self._max_len)

    def _decode(self) -> None:
        with self._lock:
            active = dict(self._active)
        rows = max(active) + 1
        length = max(len(r.prompt_ids) + len(r.generated) for r in active.values())
        rows, length = self._buckets(rows, length)
        graph = self._graphs.get((rows, length))
        if graph is not None:
            graph.replay()
        else:
            self._decode_step(rows, length)
        produced = self._next[:rows].tolist()
        self.steps += 1
        updates = []
        with self._lock:
            for slot, request in active.items():
                if self._active.get(slot) is not request:
                    continue  # cancelled while the step ran
                token = int(produced[slot])
                request.generated.append(token)
                done = token in self._eos or len(request.generated) >= request.max_new_tokens
                if done:
                    del self._active[slot]
                updates.append((request, TokenUpdate(list(request.generated), done)))
        self._deliver(updates)

    def _deliver(self, updates: list[tuple[_Request, TokenUpdate]]) -> None:
        """One cross-thread call per event loop per step, not one per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, TokenUpdate]]] = {}
        for request, update in updates:
            by_loop.setdefault(request.loop, []).append((request, update))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that event loop has closed; nobody is listening
                loop.call_soon_threadsafe(_run_handlers, batch)

    def _capture_graphs(self) -> None:
        """Record a decode step for every (rows, length) bucket, before any request runs."""
        started = time.perf_counter()
        rows_options = sorted({min(b, self._slots) for b in ROW_BUCKETS if b < self._slots * 2})
        length_options = sorted({min(b, self._max_len) for b in LENGTH_BUCKETS if b < self._max_len * 2})
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm up kernels and the allocator outside capture
                    self._decode_step(rows_options[-1], length_options[-1])
            torch.cuda.current_stream().wait_stream(side)
            self._pool = torch.cuda.graph_pool_handle()
            for rows in reversed(rows_options):
                for length in reversed(length_options):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self._pool):
                        self._decode_step(rows, length)
                    self._graphs[(rows, length)] = graph
            self._prefill_slots.fill_(self._slots)  # warm-up and capture write the scratch slot only
            for rows in reversed(rows_options):
                for width in reversed([w for w in PREFILL_WIDTHS if w <= self._max_len]):
                    if rows * width > self._prefill_tokens:
                        continue
                    self._prefill_step(rows, width)  # eager once: kernels chosen, memory sized
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self._pool):
                        self._prefill_step(rows, width)
                    self._prefill_graphs[(rows, width)] = graph
            torch.cuda.synchronize()
        self._positions.zero_()
        self._tokens.zero_()
        log.info(
            "captured %d decode and %d prefill graphs in %.1f s",
            len(self._graphs),
            len(self._prefill_graphs),
            time.perf_counter() - started,
        )


def _run_handlers(batch: list[tuple[_Request, TokenUpdate]]) -> None:
    for request, update in batch:
        request.handler(update)
