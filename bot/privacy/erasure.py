"""Erasure on request and retention: what a visitor's data is, and how it all goes.

A conversation's data lives in its Redis keys (`{p}conv:{id}*`), the indexes that name it
(the insights' content-gap references included), the feedback stream, and the feedback sink files. `erase` removes all of it; sink files are
rewritten without the conversation's lines (a temporary file, fsync, rename, under the same
`flock` the sink appends under), so an interrupted erasure leaves either the old file or the
new one, never half of one. `purge` does the same for everything older than a cutoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.conversations import ConversationStore
from bot.feedback.sink import FILE_PREFIX
from bot.privacy.atomic_files import atomic_replace
from bot.privacy.crypto import PREFIX as SEALED_PREFIX
from bot.privacy.crypto import Sealer, SealError


@dataclass(slots=True)
class ErasureReport:
    conversations: list[str]
    redis_keys: int = 0
    feedback_events: int = 0  # entries removed from the feedback stream
    sink_lines: int = 0  # lines removed from sink files
    files_rewritten: list[str] = field(default_factory=list)
    files_deleted: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "redis_keys": self.redis_keys,
            "feedback_events": self.feedback_events,
            "sink_lines": self.sink_lines,
            "files_rewritten": self.files_rewritten,
            "files_deleted": self.files_deleted,
            "dry_run": self.dry_run,
        }


class Privacy:
    def __init__(self, store: ConversationStore, sink_dir: Path) -> None:
        self._store = store
        self._redis: Any = store.redis
        self._sink_dir = sink_dir

    async def conversations_of_user(self, user_id: str) -> list[str]:
        return sorted(m.decode() for m in await self._redis.smembers(self._store.user_key(user_id)))

    async def erase(self, conversation_ids: list[str], *, dry_run: bool = False) -> ErasureReport:
        """Remove every trace of these conversations; the report says what went (or would go)."""
        report = ErasureReport(sorted(set(conversation_ids)), dry_run=dry_run)
        targets = set(report.conversations)
        if not targets:
            return report
        keys: list[str] = []
        users: list[tuple[str, str]] = []
        days: list[tuple[str, str]] = []  # (conversation, its start day in the insights)
        for cid in report.conversations:
            keys += [k.decode() async for k in self._redis.scan_iter(match=f"{self._store.key(cid)}*", count=500)]
            user, day = await self._redis.hmget(self._store.key(cid), "user_id", "ins")
            if user:
                users.append((cid, user.decode()))
            if day:
                days.append((cid, day.decode()))
        report.redis_keys = len(keys)
        stream = f"{self._store.prefix}feedback"
        doomed: list[str] = []
        seen_keys: list[str] = []
        async for entry_id, event in self._feedback_entries(stream):
            if event.get("conversation_id") in targets:
                doomed.append(entry_id)
                seen_keys.append(f"{self._store.prefix}feedback:seen:{event.get('event_id')}")
        report.feedback_events = len(doomed)
        await asyncio.to_thread(self._rewrite_sink_files, targets, report, dry_run)
        if dry_run:
            return report
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in keys + seen_keys:
                pipe.delete(key)
            pipe.zrem(f"{self._store.prefix}conversations", *report.conversations)
            pipe.zrem(f"{self._store.prefix}handoff_queue", *report.conversations)
            for cid, user in users:
                pipe.srem(self._store.user_key(user), cid)
            if doomed:
                pipe.xdel(stream, *doomed)
            await pipe.execute()
        for cid, day in days:  # the content gaps' references to it; the anonymous day counts stay
            await self._store.insights.forget(cid, day)
        return report

    async def purge(self, older_than_s: float, *, dry_run: bool = False) -> ErasureReport:
        """Erase conversations idle for longer than `older_than_s` and delete older sink files."""
        cutoff = time.time() - older_than_s
        old = await self._redis.zrangebyscore(f"{self._store.prefix}conversations", "-inf", f"({cutoff}")
        report = await self.erase([m.decode() for m in old], dry_run=dry_run)
        report.files_deleted = await asyncio.to_thread(self.delete_old_sink_files, older_than_s, dry_run)
        return report

    def delete_old_sink_files(self, older_than_s: float, dry_run: bool = False) -> list[str]:
        """Sink files whose whole day lies before the cutoff (deleted unless `dry_run`)."""
        cutoff_day = datetime.fromtimestamp(time.time() - older_than_s, UTC).strftime("%Y-%m-%d")
        old = [p for p in sorted(self._sink_dir.glob(f"{FILE_PREFIX}*.jsonl")) if p.stem.removeprefix(FILE_PREFIX) < cutoff_day]
        if not dry_run:
            for path in old:
                path.unlink(missing_ok=True)
        return [p.name for p in old]

    async def _feedback_entries(self, stream: str) -> Any:
        start = "-"
        while True:
            batch = await self._redis.xrange(stream, start, "+", count=1000)
            for entry_id, fields in batch:
                if fields:
                    yield entry_id.decode(), self._store.sealer.open(fields[b"event"])
            if len(batch) < 1000:
                return
            start = f"({batch[-1][0].decode()}"

    def _rewrite_sink_files(self, targets: set[str], report: ErasureReport, dry_run: bool) -> None:
        for path in sorted(self._sink_dir.glob(f"{FILE_PREFIX}*.jsonl")):
            with path.open("rb+") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # the sink appends under the same lock
                kept: list[bytes] = []
                removed = 0
                for line in handle.read().splitlines(keepends=True):
                    try:
                        conversation = json.loads(line).get("conversation_id")
                    except ValueError:
                        conversation = None
                    if conversation in targets:
                        removed += 1
                    else:
                        kept.append(line)
                if not removed:
                    continue
                report.sink_lines += removed
                report.files_rewritten.append(path.name)
                if not dry_run:
                    atomic_replace(path, b"".join(kept))


def parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `3600s` (or plain seconds) as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip().lower()
    with contextlib.suppress(ValueError):
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
        if value > 0:
            return value
    raise ValueError(f"not an age: {text!r} (use e.g. 30d, 12h, 90m)")


async def check_encryption(redis: Any, prefix: str, sealer: Sealer) -> str:
    """Refuse to serve data the configured keys cannot open; note which key seals from now on.

    `{p}crypto:check` holds a value sealed with the key in use when it was written: if no
    configured key opens it, stored data would be unreadable, so start-up stops here.
    """
    key = f"{prefix}crypto:check"
    stored = await redis.get(key)
    if stored is not None:
        text = stored.decode()
        if text.startswith(SEALED_PREFIX) and not sealer.enabled:
            key_id = text[len(SEALED_PREFIX) :].partition(":")[0]
            raise SealError(
                f"stored data is encrypted (key {key_id!r}) but SUPPORTBOT_ENCRYPTION_KEYS is not set; "
                "set it to the keys in use, or the service would serve unreadable data"
            )
        if sealer.open(text) != "supportbot":  # raises SealError for a wrong or missing key
            raise SealError("the encryption check value does not match; is SUPPORTBOT_REDIS_PREFIX shared with another app?")
    if sealer.enabled:
        await redis.set(key, sealer.seal("supportbot"))
        return f"encryption at rest on (sealing with key {sealer.current_key_id!r})"
    if stored is None:
        await redis.set(key, sealer.seal("supportbot"))
    return "encryption at rest is OFF: messages and feedback are stored in plain text (set SUPPORTBOT_ENCRYPTION_KEYS)"
