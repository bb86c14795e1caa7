"""The server as `make serve` starts it: a real process on a free port, real HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.generation import TransformersGenerator
from tests.conftest import MODELS_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path, ready_within_s: float, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`supportbot serve` as a real process on a free port; returns once /readyz says ready.

    It shares the test session's dequantized model and runs its own embedded Redis in
    `data_dir` unless `env` names one. Answers are kept short for the 2-core machine.
    """
    port = free_port()
    env = {
        **os.environ,
        "SUPPORTBOT_DATA_DIR": str(data_dir),
        "SUPPORTBOT_MODEL_CACHE_DIR": str(MODELS_DIR),
        "SUPPORTBOT_GENERATOR_MAX_NEW_TOKENS": "24",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:  # a file, not a pipe: an undrained pipe would block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    pytest.fail(f"server did not become ready within {ready_within_s:g} s: {log_path.read_text()}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status tells why it stopped.
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, generator: TransformersGenerator) -> Iterator[str]:
    data = tmp_path_factory.mktemp("server-data")
    shutil.copytree(sample_index, data / "index")
    process, base = start_server(data, ready_within_s=120)
    yield base
    stop_server(process)


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


def redis_children(data_dir: Path) -> list[int]:
    """Pids of redis-server processes serving `data_dir`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "redis-server" in cmdline and str(data_dir.resolve() / "redis") in cmdline:
            pids.append(int(proc.name))
    return pids
