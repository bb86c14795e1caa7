"""Live conversation events for the sockets of one worker, over one Redis pub/sub connection.

Every sequenced frame is appended to the conversation's Redis stream and published on
`{prefix}live:{conversation id}` by the same Lua script (bot/conversations.py), so any
worker or machine holding a socket on that conversation hears it: answer tokens written by
another worker, agent messages sent through the REST API, takeovers.

Pub/sub is fire-and-forget, so the stream stays the source of truth: a subscriber that
sees a gap in sequence numbers (or has just (re)subscribed) reads what it missed from the
stream, and drops anything it has already sent. One pub/sub connection per worker, however
many sockets: 1,000 idle chats cost no Redis connections of their own.

The same connection is the worker's sign of life: it is also subscribed to
`{prefix}worker:{worker id}`, and the answer locks this worker takes name that id
(bot/conversations.py). A worker killed with SIGKILL leaves the lock behind, but the kernel
closes its sockets and Redis drops its subscriptions at once, so a resent message on
another worker sees the holder gone and takes the lock over, in about a second instead of
the lock's lifetime. Not a key with a short TTL refreshed from the event loop: under load a
loop stalls for seconds (docs/benchmarks.md), and a stalled worker is alive; its
subscription stays while its process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("supportbot.events")

Listener = Callable[[dict[str, Any] | None], Awaitable[None]]  # None: "you may have missed frames, catch up"


class EventHub:
    def __init__(self, redis: Redis, prefix: str = "sb:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._listeners: dict[str, set[Listener]] = {}
        # Called with a conversation id when a visitor on any worker asks to cancel its answer.
        self.on_cancel: Callable[[str], object] | None = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # Names this process in the answer locks it takes; unique even when a pid is reused.
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._listening_since: float | None = None  # monotonic; None while not subscribed

    def listening_for(self, seconds: float) -> bool:
        """Whether this hub has been subscribed without a break for `seconds`: then Redis has
        been up that long, and every live worker's hub (reconnecting within a second) has its
        worker channel back. Before that, a lock holder without a subscriber may just be a
        worker that has not resubscribed yet after a Redis restart."""
        since = self._listening_since
        return since is not None and time.monotonic() - since >= seconds

    def channel(self, conversation_id: str) -> str:
        return f"{self._prefix}live:{conversation_id}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def listened(self, conversation_id: str) -> bool:
        """Whether any worker anywhere has a socket on this conversation (one subscriber per worker)."""
        try:
            counts = await self._redis.pubsub_numsub(self.channel(conversation_id))
        except (RedisError, ConnectionError, OSError):
            return False
        return any(count > 0 for _, count in counts)

    async def request_cancel(self, conversation_id: str) -> None:
        """Ask every worker to cancel this conversation's answer (the one writing it will)."""
        await self._redis.publish(f"{self._prefix}cancel", conversation_id)

    async def subscribe(self, conversation_id: str, listener: Listener) -> None:
        listeners = self._listeners.setdefault(conversation_id, set())
        first = not listeners
        listeners.add(listener)
        if first and self._pubsub is not None:
            with contextlib.suppress(RedisError, ConnectionError):
                await self._pubsub.subscribe(self.channel(conversation_id))

    async def unsubscribe(self, conversation_id: str, listener: Listener) -> None:
        listeners = self._listeners.get(conversation_id)
        if not listeners:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[conversation_id]
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, ConnectionError):
                    await self._pubsub.unsubscribe(self.channel(conversation_id))

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                # A placeholder channel keeps the connection in subscribe mode with no chats open.
                await self._pubsub.subscribe(
                    f"{self._prefix}live:-",
                    f"{self._prefix}cancel",
                    f"{self._prefix}worker:{self.worker_id}",
                    *(self.channel(c) for c in self._listeners),
                )
                self._listening_since = time.monotonic()
                await self._notify_all(None)  # anything published while we were not listening
                backoff = 0.2
                async for message in self._pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    channel = message["channel"].decode()
                    if channel == f"{self._prefix}cancel":
                        if self.on_cancel is not None:
                            self.on_cancel(message["data"].decode())
                        continue
                    conversation_id = channel.removeprefix(f"{self._prefix}live:")
                    frame = json.loads(message["data"])
                    for listener in list(self._listeners.get(conversation_id, ())):
                        await listener(frame)
            except asyncio.CancelledError:
                raise
            except (RedisError, ConnectionError, OSError) as exc:
                log.warning("live events connection lost (%s); reconnecting in %.1f s", type(exc).__name__, backoff)
            finally:
                self._listening_since = None
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(backoff)
            # At most a second: a socket's answer frames reach it through this connection, so
            # every second of backoff after Redis is back is a second the visitor waits.
            backoff = min(backoff * 2, 1.0)

    async def _notify_all(self, frame: dict[str, Any] | None) -> None:
        for listeners in list(self._listeners.values()):
            for listener in list(listeners):
                await listener(frame)
