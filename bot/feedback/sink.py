"""Copies the feedback stream into date-partitioned JSONL files: `feedback-YYYY-MM-DD.jsonl`.

A Redis consumer group (`sink`) hands each event to one consumer; the consumer appends
it to the file of the event's UTC date, flushes and fsyncs, and only then acknowledges it.
So a crash before the acknowledgement redelivers the event (to this consumer's pending
list, or to another consumer after `claim_idle_s`), and a crash after it has nothing left
to do: nothing acknowledged is lost.

Redelivery must not write twice, so every write first reads whatever the file gained
since this process last looked (under an exclusive `flock`, which also serialises several
workers appending to one file) and skips event ids already there. A line torn by a crash
mid-write is cut off before the next append; its event was never acknowledged, so it is
written again whole.

Acknowledged entries older than `keep_acked_s` are trimmed from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bot.privacy.crypto import PREFIX as SEALED_PREFIX
from bot.privacy.crypto import Sealer

log = logging.getLogger("supportbot.feedback.log")

GROUP = "sink"
FILE_PREFIX = "feedback-"


def partition_name(event_time: float) -> str:
    return f"{FILE_PREFIX}{datetime.fromtimestamp(event_time, UTC):%Y-%m-%d}.jsonl"


@dataclass
class _Partition:
    """What this process knows of one file: the ids in it, up to `offset` bytes."""

    ids: set[str] = field(default_factory=set)
    offset: int = 0
    inode: int = 0


class FeedbackSink:
    def __init__(
        self,
        redis: Redis,
        directory: Path,
        *,
        prefix: str = "sb:",
        consumer: str | None = None,
        batch: int = 256,
        block_ms: int = 1000,
        claim_idle_s: float = 60.0,
        keep_acked_s: float = 24 * 3600,
        sealer: Sealer | None = None,
    ) -> None:
        self._sealer = sealer or Sealer()
        self._redis: Any = redis
        self.directory = directory
        self.stream = f"{prefix}feedback"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._batch = batch
        self._block_ms = block_ms
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._keep_acked_ms = int(keep_acked_s * 1000)
        self._partitions: dict[str, _Partition] = {}
        self.written = 0  # events appended by this sink (duplicates skipped are not counted)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Copy events as they arrive until cancelled; Redis outages are waited out."""
        backoff = 0.2
        last_maintenance = 0.0
        while True:
            try:
                await self.ensure_group()
                await self.drain_pending()
                backoff = 0.2
                while True:
                    if time.monotonic() - last_maintenance > 30:
                        await self._claim_abandoned()
                        await self._trim()
                        last_maintenance = time.monotonic()
                    await self._read(">", block_ms=self._block_ms)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("feedback sink: %s; retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def run_once(self) -> int:
        """Copy everything available now (this consumer's pending entries, then new ones); returns events written."""
        before = self.written
        await self.ensure_group()
        await self.drain_pending()
        await self._claim_abandoned()
        while await self._read(">", block_ms=None):
            pass
        await self._trim()
        return self.written - before

    async def drain_pending(self) -> None:
        """Entries delivered to this consumer earlier and never acknowledged (a crash)."""
        while await self._read("0", block_ms=None):
            pass

    async def _read(self, start: str, block_ms: int | None) -> int:
        reply = await self._redis.xreadgroup(GROUP, self.consumer, {self.stream: start}, count=self._batch, block=block_ms)
        entries = reply[0][1] if reply else []
        entries = [(entry_id, fields) for entry_id, fields in entries if fields]  # deleted under us: nothing to copy
        if not entries:
            return 0
        await asyncio.to_thread(self._write, entries)
        await self._redis.xack(self.stream, GROUP, *(entry_id for entry_id, _ in entries))
        return len(entries)

    async def _claim_abandoned(self) -> None:
        """Take over entries another consumer (a crashed worker) left unacknowledged."""
        start = "0-0"
        while True:
            reply = await self._redis.xautoclaim(
                self.stream, GROUP, self.consumer, self._claim_idle_ms, start_id=start, count=self._batch
            )
            start, entries = reply[0], [(i, f) for i, f in reply[1] if f]
            if entries:
                await asyncio.to_thread(self._write, entries)
                await self._redis.xack(self.stream, GROUP, *(entry_id for entry_id, _ in entries))
            if start in (b"0-0", "0-0"):
                return

    async def _trim(self) -> None:
        """Drop entries that are acknowledged and older than `keep_acked_s`."""
        with contextlib.suppress(ResponseError):
            groups = await self._redis.xinfo_groups(self.stream)
            group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
            if group is None:
                return
            floor = _id(group["last-delivered-id"])
            pending = await self._redis.xpending(self.stream, GROUP)
            floor = min(floor, _id(pending["min"])) if pending["pending"] else (floor[0], floor[1] + 1)
            cutoff = (int(time.time() * 1000) - self._keep_acked_ms, 0)
            floor = min(floor, cutoff)
            await self._redis.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)

    # ------------------------------------------------------------------ files (worker thread)
    def _write(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        by_file: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for entry_id, fields in entries:
            raw = fields[b"event"].decode()
            event = self._sealer.open(raw)
            stream_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if raw.startswith(SEALED_PREFIX):  # the file gets the sealed body; ids and time stay readable
                event = {k: event[k] for k in ("event_id", "conversation_id", "message_id", "time")} | {"sealed": raw}
            by_file.setdefault(partition_name(float(event["time"])), []).append((stream_id, event))
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, events in sorted(by_file.items()):
            self._append(self.directory / name, events)

    def _append(self, path: Path, events: list[tuple[str, dict[str, Any]]]) -> None:
        known = self._partitions.setdefault(path.name, _Partition())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            stat = os.fstat(fd)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = -1
            if current != stat.st_ino:  # erasure or a purge replaced the file while we waited: open the new one
                os.close(fd)
                fd = -1
                self._partitions.pop(path.name, None)
                self._append(path, events)
                return
            size = stat.st_size
            if known.inode != stat.st_ino or size < known.offset:  # a new or rewritten file: read it again
                known.ids.clear()
                known.offset = 0
                known.inode = stat.st_ino
            if size > known.offset:
                known.offset = self._scan(fd, known, size)
                if known.offset < size:  # a torn last line: cut it off (its event was never acknowledged)
                    log.warning("feedback sink: cutting a torn line off %s at byte %d", path.name, known.offset)
                    os.ftruncate(fd, known.offset)
            lines, ids = [], set()
            for stream_id, event in events:
                if event["event_id"] in known.ids or event["event_id"] in ids:
                    continue
                ids.add(event["event_id"])
                record = {"stream_id": stream_id, **event}
                lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n")
            if lines:
                data = "".join(lines).encode()
                written = 0
                try:
                    while written < len(data):
                        written += os.write(fd, data[written:])
                    os.fsync(fd)
                except OSError:
                    # A full disk, say: part of the batch may be in the file, a line torn. Forget
                    # what we knew of it, so the retry reads the file again (whole lines count as
                    # written, the torn one is cut off) and nothing unwritten is taken as written.
                    self._partitions.pop(path.name, None)
                    raise
                known.ids |= ids
                known.offset += len(data)
                self.written += len(lines)
        finally:
            if fd >= 0:
                os.close(fd)  # closing releases the lock

    @staticmethod
    def _scan(fd: int, known: _Partition, size: int) -> int:
        """Read ids of whole lines from `known.offset`; returns the offset after the last whole line."""
        offset = known.offset
        data = os.pread(fd, size - offset, offset)
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                known.ids.add(json.loads(line)["event_id"])
        return offset + end


def _id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
