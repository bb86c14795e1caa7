"""The server as `make serve` starts it: a real process on a free port, real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bot.generation import TransformersGenerator
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


def test_first_start_builds_the_sample_index(tmp_path: Path, generator: TransformersGenerator) -> None:
    """`make serve` on a fresh machine: no index yet, so the server builds the sample one."""
    process, _ = start_server(tmp_path, ready_within_s=180)
    try:
        assert (tmp_path / "index" / "CURRENT").read_text().strip() == "000001"
        assert redis_children(tmp_path), "no SUPPORTBOT_REDIS_URL: the server runs its own Redis"
    finally:
        stop_server(process)
    assert not redis_children(tmp_path), "the embedded Redis stops with the server"
    assert (tmp_path / "redis" / "appendonly.aof").exists()
