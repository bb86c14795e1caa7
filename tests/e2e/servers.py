"""Real server processes for the end-to-end tests: started as `make serve` starts them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODELS_DIR

# A server's base URL, or a test's node id -> its log, for the report of a test that fails (conftest.py).
SERVER_LOGS: dict[str, Path] = {}


def data_dir_with_sample_index(tmp_path_factory: pytest.TempPathFactory, sample_index: Path, name: str) -> Path:
    """A fresh data directory holding a copy of the session's sample index."""
    data = tmp_path_factory.mktemp(name)
    shutil.copytree(sample_index, data / "index")
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    data_dir: Path,
    ready_within_s: float,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    own_process_group: bool = False,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`supportbot serve` as a real process on a free port; returns once /readyz says ready.

    It shares the test session's dequantized model and runs its own embedded Redis in
    `data_dir` unless `env` names one. Answers are kept short for the 2-core machine.
    """
    port = port or free_port()
    env = {
        **os.environ,
        "SUPPORTBOT_DATA_DIR": str(data_dir),
        "SUPPORTBOT_MODEL_CACHE_DIR": str(MODELS_DIR),
        "SUPPORTBOT_GENERATOR_MAX_NEW_TOKENS": "24",
        # These servers exercise streaming, cancellation and admission, which need the generator;
        # the default (auto: the composer until a model earns trust) has its own tests.
        "SUPPORTBOT_ANSWER_MODE": "generative",
        # ...and answers that stream for seconds on this machine, not the composer's after 3 s.
        "SUPPORTBOT_ANSWER_FIRST_TEXT_DEADLINE_S": "120",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:  # a file, not a pipe: an undrained pipe would block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=own_process_group,  # as a shell runs it: a group that Ctrl+C signals
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


def stop_server(process: subprocess.Popen[bytes], within_s: float = 30) -> None:
    """SIGTERM, and the server must be gone within `within_s`. One that is not is asked for
    its threads' stacks (SIGUSR1), killed with its embedded Redis, and the test fails with
    the end of its log: a failed test leaves no process behind."""
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(2)  # faulthandler writes the stacks from a signal handler, at once
        process.kill()
        process.wait()
        log_path: Path = process.log_path  # type: ignore[attr-defined]
        for pid in redis_children(log_path.parent):
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"server still running {within_s:g} s after SIGTERM; its log ends:\n{log_path.read_text()[-12000:]}")
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status tells why it stopped.
    assert status in (0, -signal.SIGTERM), process.log_path.read_text()[-4000:]  # type: ignore[attr-defined]


@contextmanager
def served(
    data_dir: Path,
    ready_within_s: float = 120,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    log_key: str | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`start_server`, its log filed under `log_key` (the base URL unless given) for failure
    reports, and `stop_server` however the block ends."""
    process, base = start_server(data_dir, ready_within_s=ready_within_s, env=env, args=args)
    SERVER_LOGS[log_key or base] = process.log_path  # type: ignore[attr-defined]
    try:
        yield process, base
    finally:
        stop_server(process)


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


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUPPORTBOT_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


class Site:
    """A running server with an admin key (made by the CLI) and two agent keys (made over REST)."""

    def __init__(self, base: str, data: Path) -> None:
        self.base, self.data = base, data
        made = cli(data, "keys", "create", "--role", "admin", "--name", "Root")
        assert made.returncode == 0, made.stderr
        self.admin = made.stdout.strip()
        self.agent = self.make_key("agent", "Alice")
        self.other_agent = self.make_key("agent", "Bob")

    def make_key(self, role: str, name: str) -> str:
        response = self.post("/v1/admin/keys", self.admin, {"role": role, "name": name})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def get(self, path: str, key: str | None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.base + path, headers=headers, params=params, timeout=30)

    def post(self, path: str, key: str | None, body: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.base + path, headers=headers, json=body, timeout=30)
