"""An OpenAI-compatible completions endpoint whose behaviour a benchmark switches at run
time: the fault injector for the generator (bench/chaos.py).

The service under test uses it as it would use vLLM (`SUPPORTBOT_GENERATOR_BACKEND=openai`).
`ok` streams a grounded answer at once (the first sentence of the first passage in the
prompt, cited); `slow` streams the same answer one word a second (a loaded GPU, an
inference server in trouble); `failing` answers 500 (an engine that raises).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

Mode = Literal["ok", "slow", "failing"]
_PASSAGE = re.compile(r"<passage>(.*?)</passage>", re.S)


class FakeGenerator:
    def __init__(self) -> None:
        self.mode: Mode = "ok"
        self.requests = 0
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/completions", response_model=None)
        async def completions(request: Request) -> StreamingResponse | JSONResponse:
            body = await request.json()
            self.requests += 1
            if self.mode == "failing":
                return JSONResponse({"error": {"message": "injected failure", "type": "server_error"}}, status_code=500)
            passages = _PASSAGE.findall(str(body.get("prompt", "")))
            first = re.split(r"(?<=[.!?])\s", passages[0].strip())[0] if passages else "I do not know."
            words = f"{first.rstrip('.')} [1].".split(" ")
            delay = 1.0 if self.mode == "slow" else 0.0
            return StreamingResponse(_stream(words, delay), media_type="text/event-stream")

        return app

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="fake-generator")
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)


async def _stream(words: list[str], delay: float) -> AsyncIterator[str]:
    for n, word in enumerate(words):
        if delay:
            await asyncio.sleep(delay)
        yield _chunk(("" if n == 0 else " ") + word, None)
    yield _chunk("", "stop")
    yield "data: [DONE]\n\n"


def _chunk(text: str, finish_reason: str | None) -> str:
    body: dict[str, Any] = {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(body)}\n\n"
