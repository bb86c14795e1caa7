"""The OpenAI-compatible backend against a real `transformers serve` process."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.assistant import AnswerPath, TurnDone
from bot.generation.generator import GenerationError, GenerationRequest, GenerationStats, GenerationTimeout
from bot.generation.model_store import BUNDLED_GENERATOR, resolve_generator
from bot.generation.remote import OpenAICompatibleGenerator
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever
from tests.bot.helpers import generative_assistant
from tests.conftest import MODELS_DIR

PROMPT = "Question: How do I descale my kettle?\nAnswer:"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    model_dir, _ = resolve_generator(BUNDLED_GENERATOR, MODELS_DIR)
    executable = shutil.which("transformers", path=str(Path(os.sys.executable).parent))
    assert executable, "the transformers CLI is installed with the package"
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [executable, "serve", "--host", "127.0.0.1", "--port", str(port), model_dir],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("transformers serve did not start within 180 s")
    yield f"{base}/v1", model_dir
    process.terminate()
    process.wait(timeout=30)


def remote(endpoint: tuple[str, str]) -> OpenAICompatibleGenerator:
    url, model_dir = endpoint
    return OpenAICompatibleGenerator(url, model_dir, tokenizer=model_dir, context_window=1024)


async def collect(generator: OpenAICompatibleGenerator, request: GenerationRequest) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    try:
        return "".join([d async for d in generator.stream(request, stats)]), stats
    finally:
        await generator.aclose()


def test_streams_from_the_endpoint(endpoint: tuple[str, str]) -> None:
    text, stats = asyncio.run(collect(remote(endpoint), GenerationRequest(PROMPT, max_new_tokens=10, timeout_s=120)))
    assert text.strip() and 1 <= stats.completion_tokens <= 10
    assert stats.prompt_tokens > 5 and stats.time_to_first_token_s is not None


def test_stop_strings_apply_even_if_the_server_ignores_them(endpoint: tuple[str, str]) -> None:
    text, stats = asyncio.run(collect(remote(endpoint), GenerationRequest(PROMPT, max_new_tokens=30, stop=(" ",), timeout_s=120)))
    assert " " not in text and stats.finish_reason in ("stop", "eos")


def test_timeout_and_unreachable_endpoint_are_clear_errors(endpoint: tuple[str, str]) -> None:
    with pytest.raises(GenerationTimeout, match="longer than 0.05 s"):
        asyncio.run(collect(remote(endpoint), GenerationRequest(PROMPT, max_new_tokens=200, timeout_s=0.05)))
    nowhere = OpenAICompatibleGenerator(f"http://127.0.0.1:{free_port()}/v1", "m", tokenizer=endpoint[1])
    with pytest.raises(GenerationError, match="cannot reach the generation endpoint"):
        asyncio.run(collect(nowhere, GenerationRequest(PROMPT, max_new_tokens=5)))


def test_a_whole_turn_through_the_remote_backend(
    endpoint: tuple[str, str], sample_retriever: Retriever, embedder: SentenceEmbedder
) -> None:
    generator = remote(endpoint)
    bot = generative_assistant(sample_retriever, generator, embedder, max_new_tokens=32, timeout_s=120)

    async def turn() -> TurnDone:
        try:
            events = [e async for e in bot.respond("How long do card refunds take to arrive?")]
        finally:
            await generator.aclose()
        assert isinstance(events[-1], TurnDone)
        return events[-1]

    result = asyncio.run(turn()).result
    assert result.path in (AnswerPath.GENERATED, AnswerPath.FALLBACK) and result.sources[0].document_id == "billing/refunds"
