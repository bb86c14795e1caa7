"""The embedded redis-server: it lives as long as the process that started it, and comes back if it dies."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis

from server import redis_server
from server.redis_server import EmbeddedRedis, RedisStartError


def test_started_from_an_event_loop_it_outlives_the_pool_threads(tmp_path: Path) -> None:
    """Regression: started inside a pool thread, Redis got SIGTERM (PR_SET_PDEATHSIG follows the
    parent *thread*) once that idle thread was retired, and the server lost its Redis minutes in."""
    embedded = EmbeddedRedis(tmp_path / "redis")

    async def scenario() -> None:
        await embedded.start_async()
        # Every pool thread exits, the one that waited for Redis to answer included.
        await asyncio.get_running_loop().shutdown_default_executor()
        await asyncio.sleep(0.5)

    try:
        asyncio.run(scenario())
        assert embedded.is_running() and embedded.exited() is None
        assert redis.Redis(unix_socket_path=str(embedded.socket)).ping()
    finally:
        embedded.stop()
    assert embedded.exited() is None and not embedded.is_running()  # stopped on purpose: not "exited by itself"


def test_a_killed_redis_is_restarted_with_its_data(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "redis")
    restarts: list[int] = []

    async def scenario() -> None:
        await embedded.start_async()
        client = redis.Redis(unix_socket_path=str(embedded.socket))
        client.set("kept", "yes")
        client.bgrewriteaof()  # on disk now, not within the next second's fsync
        while client.info("persistence")["aof_rewrite_in_progress"]:
            await asyncio.sleep(0.05)
        watch = asyncio.create_task(embedded.watch(interval_s=0.1, on_restart=lambda: restarts.append(1)))
        process = embedded._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.1)
            if restarts:
                break
        watch.cancel()
        assert restarts == [1] and embedded.is_running() and embedded._process is not process
        assert redis.Redis(unix_socket_path=str(embedded.socket)).get("kept") == b"yes"

    try:
        asyncio.run(scenario())
    finally:
        embedded.stop()


def test_a_start_that_times_out_is_tried_again_by_the_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A redis-server that does not answer in time is stopped, but counts as exited, not as
    stopped on purpose: the watch starts it again instead of leaving the server without Redis."""
    hung = tmp_path / "hung-redis-server"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")  # a fault: starts, never listens
    hung.chmod(0o755)
    binaries = iter([str(hung)])
    real = redis_server.redis_server_binary
    monkeypatch.setattr(redis_server, "redis_server_binary", lambda: next(binaries, None) or real())
    embedded = EmbeddedRedis(tmp_path / "redis")
    restarts: list[int] = []

    async def scenario() -> None:
        with pytest.raises(RedisStartError, match="did not answer within 0.5 s"):
            await embedded.start_async(timeout_s=0.5)
        assert embedded.exited() is not None and not embedded.is_running()
        watch = asyncio.create_task(embedded.watch(interval_s=0.1, on_restart=lambda: restarts.append(1)))
        for _ in range(100):
            await asyncio.sleep(0.1)
            if restarts:
                break
        watch.cancel()
        assert restarts == [1] and embedded.is_running()
        assert redis.Redis(unix_socket_path=str(embedded.socket)).ping()

    try:
        asyncio.run(scenario())
    finally:
        embedded.stop()
