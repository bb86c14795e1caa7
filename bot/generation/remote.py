"""A generator behind any OpenAI-compatible completions endpoint (vLLM, TGI, `transformers serve`).

For scaling past one machine: the bot keeps retrieval, prompts and policy, and a fleet of
inference servers does the batching. Uses the legacy text-completions API because the
prompt is plain text (the bundled model is a base model); stop strings are sent to the
server and enforced here too, so servers that ignore them still stop in the right place.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

import openai

from bot.generation.generator import (
    ContextOverflow,
    GenerationError,
    GenerationRequest,
    GenerationStats,
    GenerationTimeout,
    StopMatcher,
)
from bot.prompt import render_chat


class OpenAICompatibleGenerator:
    def __init__(
        self, base_url: str, model: str, tokenizer: str, *, api_key: str | None = None, context_window: int = 4096
    ) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=0)
        self._base_url = base_url
        self._model = model
        self._tokenizer_name = tokenizer
        self._tokenizer: Any = None
        self._context_window = context_window
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        return self._context_window

    def _local_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name)
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        """Counted locally with the model's tokenizer, so prompts are budgeted without a round trip."""
        return len(self._local_tokenizer().encode(text, add_special_tokens=False))

    def format_chat(self, messages: list[dict[str, str]]) -> str | None:
        """Rendered here with the same tokenizer's template and sent as a completion prompt."""
        return render_chat(self._local_tokenizer(), messages)

    async def aclose(self) -> None:
        """Close pooled connections; call on shutdown, from the event loop that used them."""
        await self._client.close()

    async def stream(self, request: GenerationRequest, stats: GenerationStats | None = None) -> AsyncGenerator[str, None]:
        stats = stats or GenerationStats()
        stats.prompt_tokens = await asyncio.to_thread(self.count_tokens, request.prompt)
        ContextOverflow.check(stats.prompt_tokens, request.max_new_tokens, self._context_window)
        matcher = StopMatcher(request.stop)
        produced = ""
        try:
            async with asyncio.timeout(request.timeout_s):
                response = await self._client.completions.create(
                    model=self._model,
                    prompt=request.prompt,
                    max_tokens=request.max_new_tokens,
                    stop=list(request.stop[:4]) or None,  # the API takes at most four
                    temperature=0,
                    stream=True,
                )
                async with response:  # closing it drops the connection, which aborts the server's work
                    async for chunk in response:
                        if not chunk.choices:
                            continue
                        choice = chunk.choices[0]
                        produced += choice.text or ""
                        emit = matcher.feed(choice.text or "")
                        if emit:
                            stats.mark_output()
                            yield emit
                        if matcher.stopped:
                            stats.finish_reason = "stop"
                            return
                        if choice.finish_reason:
                            stats.finish_reason = "eos" if choice.finish_reason == "stop" else choice.finish_reason
                    tail = matcher.flush()
                    if tail:
                        yield tail
        except TimeoutError:
            raise GenerationTimeout(f"generation took longer than {request.timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            raise GenerationError(f"cannot reach the generation endpoint {self._base_url}: {exc}") from None
        except openai.APIStatusError as exc:
            raise GenerationError(f"the generation endpoint answered {exc.status_code}: {exc.message}") from None
        finally:
            # Chunks are not tokens (some carry only a finish reason): count what was produced.
            stats.completion_tokens = self.count_tokens(produced) if produced else 0
            stats.total_s = time.perf_counter() - stats.started
