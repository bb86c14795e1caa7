"""A chat client speaking the v1 protocol over a real websocket (the tests' stand-in for the widget)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

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
        frames = [await self.recv(timeout)]
        while frames[-1]["type"] != kind:
            frames.append(await self.recv(timeout))
        return frames

    async def close(self) -> None:
        await self.ws.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
