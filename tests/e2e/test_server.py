"""The server as `make serve` starts it: a real process on a free port, real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from bot.generation import TransformersGenerator
from tests.e2e.chat_client import QUESTION, Client, run
from tests.e2e.servers import redis_children, start_server, stop_server


def test_health_and_search(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json()["status"] == "ready"
    body = httpx.get(f"{server}/v1/search", params={"q": "my kettle shows E-1042", "k": 2}).json()
    assert body["passages"][0]["document_id"] == "troubleshooting/error-codes"
    assert body["passages"][0]["url"] == "https://help.brewlo.example/troubleshooting/error-codes"
    assert 0.0 <= body["confidence"] <= 1.0


def test_public_search_hides_internal_articles(server: str) -> None:
    body = httpx.get(f"{server}/v1/search", params={"q": "chargeback goodwill credit agents", "k": 20}).json()
    assert all(not p["document_id"].startswith("internal/") for p in body["passages"])


@pytest.mark.parametrize(
    ("params", "status"), [({"q": "  "}, 422), ({"q": "x" * 1001}, 422), ({"q": "refund", "k": 0}, 422), ({}, 422)]
)
def test_bad_search_requests(server: str, params: dict[str, object], status: int) -> None:
    assert httpx.get(f"{server}/v1/search", params=params).status_code == status


def test_first_start_builds_the_sample_index_and_its_redis_comes_back(tmp_path: Path, generator: TransformersGenerator) -> None:
    """`make serve` on a fresh machine: no index yet, so the server builds the sample one and
    runs its own Redis; if that Redis dies (killed, out of memory), the server restarts it
    and chats go on where they were, from its append-only file."""
    process, base = start_server(tmp_path, ready_within_s=180)
    try:
        assert (tmp_path / "index" / "CURRENT").read_text().strip() == "000001"
        [first] = redis_children(tmp_path)  # no SUPPORTBOT_REDIS_URL: the server runs its own Redis

        async def scenario() -> None:
            client = await Client.open(base)
            ready = await client.start()
            await client.send({"type": "message", "client_message_id": "before", "text": QUESTION})
            await client.until("done")
            await client.close()
            await asyncio.sleep(1.5)  # the append-only file is fsynced every second
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                httpx.get(f"{base}/readyz").status_code == 200 and redis_children(tmp_path) not in ([], [first])
            ):
                await asyncio.sleep(0.2)
            [second] = redis_children(tmp_path)
            assert second != first
            again = await Client.open(base)
            restored = await again.start(conversation_id=ready["conversation_id"])
            assert [m["client_message_id"] for m in restored["history"] if m["role"] == "user"] == ["before"]
            await again.send({"type": "message", "client_message_id": "after", "text": QUESTION})
            frames = await again.until("done")  # streamed through the reconnected live events
            assert any(f["type"] == "token" for f in frames)
            await again.close()

        run(scenario())
        metrics = httpx.get(f"{base}/metrics").text
        assert "supportbot_embedded_redis_restarts_total 1.0" in metrics.splitlines()
        assert "exited by itself" in process.log_path.read_text()  # type: ignore[attr-defined]
    finally:
        stop_server(process)
    assert not redis_children(tmp_path), "the embedded Redis stops with the server"
    assert (tmp_path / "redis" / "appendonly.aof").exists()
