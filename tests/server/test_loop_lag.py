"""The event-loop lag metric sees a blocked loop, and stays near zero on an idle one."""

from __future__ import annotations

import asyncio
import time

from server.metrics import Metrics, watch_event_loop


def observed(metrics: Metrics) -> tuple[float, float, float]:
    """(count, sum, count above 100 ms) of the lag histogram."""
    samples = {(s.name, s.labels.get("le")): s.value for m in metrics.loop_lag.collect() for s in m.samples}
    count = samples[("supportbot_event_loop_lag_seconds_count", None)]
    return (
        count,
        samples[("supportbot_event_loop_lag_seconds_sum", None)],
        count - samples[("supportbot_event_loop_lag_seconds_bucket", "0.1")],
    )


def test_a_call_that_blocks_the_loop_shows_as_lag_of_its_length() -> None:
    metrics = Metrics()

    async def scenario() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        watcher = asyncio.create_task(watch_event_loop(metrics.loop_lag, interval_s=0.01))
        await asyncio.sleep(0.3)
        idle = observed(metrics)
        time.sleep(0.25)  # what a model call on the loop's thread would do to every connection
        await asyncio.sleep(0.05)
        watcher.cancel()
        return idle, observed(metrics)

    idle, blocked = asyncio.run(scenario())
    assert idle[0] >= 5 and idle[2] == 0  # woken on time, many times
    assert blocked[2] == 1 and blocked[1] - idle[1] >= 0.24  # one wake-up 0.25 s late
