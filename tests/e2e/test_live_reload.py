"""Live index reload with two workers: `supportbot kb ingest` while a chat is open, and the
next answer and every worker's search use the new article within seconds; a broken new
version leaves the workers serving the old one and says so."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.chat_client import Client, run
from tests.e2e.servers import cli, data_dir_with_sample_index, served

ARTICLE = """---
title: Gift wrapping
---
# Gift wrapping

Brewlo gift-wraps any order for 4 EUR. Choose "Gift wrap" at checkout, and add a card
with your message. The wrapping paper is recycled kraft paper tied with cotton ribbon.
"""
QUESTION = "Can you gift wrap my order?"


def worker_versions(base: str) -> dict[str, float]:
    """Each live worker's index version, from the summed `/metrics` of any worker."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {pid: float(v) for pid, v in re.findall(r'^supportbot_index_version\{pid="(\d+)"\} (\S+)$', text, re.M)}


def reload_failures(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(r'^supportbot_index_reloads_total\{result="failed"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(condition: Any, within_s: float, what: str) -> float:
    """Seconds until `condition()` held; fails after `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    pytest.fail(f"not within {within_s:g} s: {what}")


async def ask(client: Client, cmid: str) -> list[str]:
    await client.send({"type": "message", "client_message_id": cmid, "text": QUESTION})
    frames = await client.until("done")
    return [s["document_id"] for f in frames if f["type"] == "sources" for s in f["sources"]]


def test_an_ingest_reaches_every_worker_and_the_open_chat(
    tmp_path_factory: pytest.TempPathFactory, sample_index: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = data_dir_with_sample_index(tmp_path_factory, sample_index, "live-reload")
    env = {"SUPPORTBOT_ANSWER_MODE": "extractive", "SUPPORTBOT_INDEX_RELOAD_INTERVAL_S": "1"}
    with served(data, ready_within_s=240, env=env, args=["--workers", "2"], log_key=request.node.nodeid) as (process, base):
        wait_for(lambda: list(worker_versions(base).values()) == [1.0, 1.0], 180, "both workers ready on version 1")
        article = tmp_path / "gift-wrapping.md"
        article.write_text(ARTICLE)

        async def scenario() -> tuple[list[str], list[str], float]:
            client = await Client.open(base)
            try:
                await client.start()
                before = await ask(client, "q1")
                ingested = cli(data, "kb", "ingest", str(article))  # as a user would, beside the running server
                assert ingested.returncode == 0, ingested.stderr
                assert "index version 000002" in " ".join(ingested.stdout.split())
                took = wait_for(lambda: list(worker_versions(base).values()) == [2.0, 2.0], 15, "both workers on version 2")
                return before, await ask(client, "q2"), took
            finally:
                await client.close()

        before, after, took = run(scenario())
        assert "gift-wrapping" not in before and after[0] == "gift-wrapping", (before, after)
        assert took < 10
        for _ in range(6):  # whichever worker answers
            found = httpx.get(f"{base}/v1/search", params={"q": QUESTION, "k": 1}, timeout=10).json()
            assert found["index_version"] == "000002" and found["passages"][0]["document_id"] == "gift-wrapping"
        assert httpx.get(f"{base}/readyz", timeout=10).json()["index"] == "000002"

        # A broken version (here: a corrupt FAISS file) is refused; the workers keep version 2.
        index = data / "index"
        shutil.copytree(index / "versions" / "000002", index / "versions" / "000003")
        (index / "versions" / "000003" / "index.faiss").write_bytes(b"not a faiss index")
        point_current_at(index, "000003")
        wait_for(lambda: reload_failures(base) >= 2, 15, "both workers report the failed reload")
        for _ in range(4):
            ready = httpx.get(f"{base}/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["index"] == "000002"
            assert "corrupt" in ready.json()["index_reload"]
            assert httpx.get(f"{base}/v1/search", params={"q": QUESTION}, timeout=10).json()["index_version"] == "000002"
        assert list(worker_versions(base).values()) == [2.0, 2.0] and process.poll() is None
        # Rolled back by hand: the report clears.
        point_current_at(index, "000002")
        wait_for(lambda: all("index_reload" not in _ready(base) for _ in range(4)), 15, "the failure report cleared")


def _ready(base: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/readyz", timeout=10).json())


def point_current_at(index: Path, version: str) -> None:
    """What the writer does: a new CURRENT file, renamed over the old one."""
    staging = index / ".CURRENT.test"
    staging.write_text(version + "\n")
    os.replace(staging, index / "CURRENT")
