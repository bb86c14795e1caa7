"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

With several workers (`supportbot serve --workers N`) the supervisor sets
PROMETHEUS_MULTIPROC_DIR before any worker starts: every worker then writes its values to
files there, and `/metrics` on any worker reports the sum over all of them (prometheus-client's
multiprocess mode; gauges add up the live workers).
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
LOOP_LAG_INTERVAL_S = 0.05


def embedded_redis_restarts(registry: CollectorRegistry | None) -> Counter:
    """Kept by the app that runs the embedded Redis, or by the supervisor of several workers."""
    return Counter(
        "supportbot_embedded_redis_restarts_total",
        "Times the embedded redis-server exited by itself and was restarted.",
        registry=registry,
    )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "supportbot_ws_connections", "Open chat websocket connections.", multiprocess_mode="livesum", registry=r
        )
        self.connections_refused = Counter("supportbot_ws_refused_total", "Websocket upgrades refused.", ["reason"], registry=r)
        self.frames = Counter("supportbot_ws_frames_total", "Client frames received, by type.", ["type"], registry=r)
        self.errors = Counter("supportbot_errors_total", "Error frames sent, by code.", ["code"], registry=r)
        self.answers = Counter("supportbot_answers_total", "Answers finished, by path.", ["path"], registry=r)
        self.time_to_first_token = Histogram(
            "supportbot_time_to_first_token_seconds",
            "From the user's message arriving to the first answer token sent.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generator_ttft = Histogram(
            "supportbot_generator_ttft_seconds", "The generator's own time to first token.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens_per_second = Histogram(
            "supportbot_tokens_per_second",
            "Completion tokens per second of each answer.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.retrieval_seconds = Histogram(
            "supportbot_retrieval_seconds", "Retrieval time per turn.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.redis_restarts = embedded_redis_restarts(r)
        self.loop_lag = Histogram(
            "supportbot_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 50 ms: time every frame of that worker waited "
            "for a blocking call, the GIL or other tasks.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "supportbot_generator_requests",
            "Requests in the generator (running or waiting).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.feedback = Counter(
            "supportbot_feedback_total", "Feedback stored: ratings (up/down) and corrections.", ["kind"], registry=r
        )
        self.index_version = Gauge(
            "supportbot_index_version",
            "The knowledge-base index version this worker serves (one series per worker with --workers).",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.index_reloads = Counter(
            "supportbot_index_reloads_total",
            "New index versions seen: swapped in, or failed to load (the old one is still served).",
            ["result"],
            registry=r,
        )
        self.handoffs = Counter(
            "supportbot_status_changes_total", "Conversation status changes, by action.", ["action"], registry=r
        )

    def exposition(self) -> bytes:
        """The text `/metrics` serves: this app's registry, or every worker's values when several share the port."""
        if os.environ.get(MULTIPROCESS_DIR_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))

    def process_stopped(self) -> None:
        """With several workers: this one's gauges stop counting towards the sum."""
        if os.environ.get(MULTIPROCESS_DIR_ENV):
            multiprocess.mark_process_dead(os.getpid())


async def watch_event_loop(lag: Histogram, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observe, every `interval_s`, how late the loop woke this task: the part of every frame's
    latency that no handler owns. Zero on an idle worker; a blocking call shows as its length."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        lag.observe(max(0.0, loop.time() - due))
