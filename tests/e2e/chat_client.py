"""A chat client speaking the v1 protocol over a real websocket (the tests' stand-in for the widget)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

QUESTION = "How do I descale my kettle?"


class Client:
    """A chat client speaking the v1 protocol over a real websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, base: str, **kwargs: Any) -> Client:
        return cls(await websockets.connect(base.replace("http", "ws") + "/v1/chat", **kwargs))

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 60) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def start(self, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "start", **fields})
        return await self.recv()

    async def until(self, kind: str, timeout: float = 90) -> list[dict[str, Any]]:
        """Frames up to and including the first of type `kind`."""
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != kind:
            try:
                frames.append(await self.recv(timeout))
            except TimeoutError:
                raise AssertionError(f"no frame within {timeout:g} s while waiting for {kind!r}; got {frames}") from None
        return frames

    async def close(self) -> None:
        await self.ws.close()


async def answered_while_stopping(base: str, stop: Callable[[], None]) -> tuple[list[dict[str, Any]], int | None]:
    """Ask a question, call `stop` (a signal to the server) once the question is stored, and
    return the frames up to the answer's `done` and the close code the socket gets after it."""
    client = await Client.open(base)
    try:
        ready = await client.start()
        assert ready["type"] == "ready", ready
        await client.send({"type": "message", "client_message_id": "last", "text": QUESTION})
        echo = await client.recv()
        assert echo["type"] == "user_message", echo
        stop()
        frames = await client.until("done")
        return frames, await closed_with(client)
    finally:
        await client.close()  # a failed assertion must not leave the socket for a later test's warnings


async def closed_with(client: Client, timeout: float = 30) -> int | None:
    """The close code of a socket the server is expected to close next."""
    try:
        frame = await client.recv(timeout)
    except ConnectionClosed:
        return client.ws.close_code  # type: ignore[no-any-return]
    raise AssertionError(f"expected the server to close the socket, got {frame}")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
