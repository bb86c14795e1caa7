"""`supportbot serve`: one server process, or N workers on one port (`--workers N`).

Workers are uvicorn's own (its supervisor spawns them on one shared listening socket,
health-pings them, replaces any that die, and passes SIGTERM on), each building the app
through `app_from_environment`. Each drains on SIGTERM as a single server does
(`server.app`). What must exist once is made by the supervisor before any worker starts:
the sample index and the dequantized model (workers would race to write them), the
embedded Redis (one for all; workers get its URL in SUPPORTBOT_REDIS_URL), and the
directory where the workers' Prometheus values meet (`server.metrics`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from socket import socket
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from server.log_format import configure_json_logging
from server.parent import bind_to_supervisor, serve_with_supervisor
from server.redis_server import EmbeddedRedis, RedisStartError
from server.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("supportbot.server")


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    configure_json_logging()
    if workers > 1:
        _serve_workers(settings, host, port, workers)
        return
    uvicorn.Server(_config(settings, _app(settings), host, port)).run()


def app_from_environment() -> FastAPI:
    """The app of one worker: settings from the environment the supervisor prepared."""
    configure_json_logging()
    settings = Settings()
    bind_to_supervisor(settings.supervisor_pid)  # killed with it while starting; drained once serving
    app = _app(settings)
    startup = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(started: Any) -> AsyncIterator[Any]:
        async with startup(started) as state:
            serve_with_supervisor(settings.supervisor_pid)
            yield state

    app.router.lifespan_context = lifespan
    return app


def _app(settings: Settings) -> FastAPI:
    from server.app import create_app

    # The embedder and the generator run Python in worker threads; with the default 5 ms GIL
    # switch interval the event loop could wait that long for its turn on every frame.
    sys.setswitchinterval(settings.gil_switch_interval_s)
    return create_app(settings)


def _config(settings: Settings, app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        # Chat frames are a few hundred bytes: compressing each costs more time than it saves bytes.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) + 5,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 (or its FORWARDED_ALLOW_IPS)
        # by default, so any local process could pick its address; only a configured proxy is believed.
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        **options,
    )


def _serve_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    # Set before server.metrics first imports prometheus_client in this process: it picks
    # file-backed values at import time. The workers inherit the variable.
    metrics_dir = (settings.data_dir / "run" / "metrics").resolve()
    shutil.rmtree(metrics_dir, ignore_errors=True)  # values of an earlier run's workers
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from server.metrics import embedded_redis_restarts

    _prepare_shared_files(settings)
    # torch and FAISS start one thread per core in every worker: N workers would run N times as
    # many compute threads as there are cores and slow each other down (measured in
    # docs/benchmarks.md). Set after the supervisor's own work above; an operator's value wins.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        os.environ["SUPPORTBOT_REDIS_URL"] = embedded.start()  # on the main thread, which outlives it
    # Workers end with this process, even when it is killed with SIGKILL (server.parent).
    os.environ["SUPPORTBOT_SUPERVISOR_PID"] = str(os.getpid())
    restarts = embedded_redis_restarts(None)  # in the supervisor's own file; every worker's /metrics adds it in
    config = _config(
        settings,
        "server.serving:app_from_environment",
        host,
        port,
        factory=True,
        workers=workers,
        # Loading the models keeps a starting worker's interpreter busy; its health pings may wait.
        timeout_worker_healthcheck=30,
    )
    log.info("starting %d workers on %s:%d, redis %s", workers, host, port, "embedded" if embedded else "external")
    try:
        Supervisor(config, [config.bind_socket()], embedded, on_redis_restart=restarts.inc).run()
    finally:
        if embedded is not None:
            embedded.stop()


def _prepare_shared_files(settings: Settings) -> None:
    """Build the sample index and dequantize the bundled model once, before the workers start."""
    from bot.assistant import AnswerMode
    from bot.generation.model_store import adapter_info, resolve_generator
    from knowledge_base.components import build_builder, build_embedder
    from server.components import answer_mode, served_generator_model

    report = build_builder(settings, build_embedder(settings)).ensure_built([settings.sample_kb_dir])
    if report is not None:
        log.info("built the sample knowledge base index: %d documents, version %s", len(report.added), report.version)
    if answer_mode(settings).mode is AnswerMode.EXTRACTIVE:
        return  # the composer answers: no worker loads the model
    if settings.generator_backend != "openai" or settings.generator_tokenizer is None:
        load_from = resolve_generator(served_generator_model(settings)[0], settings.models_dir)[0]
        adapters = adapter_info(Path(load_from))
        if adapters is not None:  # an adapter-only candidate: the workers load its base model under it
            resolve_generator(str(adapters.get("base_model", "")), settings.models_dir)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, which also keeps the embedded Redis running (it restarts
    one that exits by itself, from its append-only file) and drops the live gauges of workers
    that died, so `/metrics` does not count their connections forever.

    Redis is watched from a thread of its own, every 0.2 s: uvicorn's loop pings each worker in
    turn and waits up to `timeout_worker_healthcheck` for each answer, so on a loaded machine a
    dead Redis was noticed only after 17 s (bench/chaos.py). A Redis the watcher restarts gets
    its parent-death signal from that thread, which lives until the workers have stopped."""

    REDIS_WATCH_S = 0.2

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket],
        redis: EmbeddedRedis | None,
        on_redis_restart: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config, sockets)
        self.redis = redis
        self.on_redis_restart = on_redis_restart
        self._workers_stopped = threading.Event()

    def run(self) -> None:
        watcher = None
        if self.redis is not None:
            watcher = threading.Thread(target=self._watch_redis, args=(self.redis,), name="redis-watch", daemon=True)
            watcher.start()
        try:
            super().run()  # returns once every worker has stopped
        finally:
            self._workers_stopped.set()
            if watcher is not None:
                watcher.join(timeout=20)

    def _watch_redis(self, redis: EmbeddedRedis) -> None:
        while not self._workers_stopped.wait(self.REDIS_WATCH_S):
            if not self.should_exit.is_set():
                self._keep_redis_alive(redis)

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        gone = before - {process.pid for process in self.processes}
        if gone:
            from prometheus_client import multiprocess

            for pid in gone:
                if pid is not None:
                    multiprocess.mark_process_dead(pid)

    def _keep_redis_alive(self, redis: EmbeddedRedis) -> None:
        try:
            if not redis.respawn_if_exited():
                return
            redis.wait_ready()
        except RedisStartError as exc:  # tried again on the next round, half a second on
            log.error("embedded redis-server did not restart: %s", exc)
            return
        if self.on_redis_restart is not None:
            self.on_redis_restart()
