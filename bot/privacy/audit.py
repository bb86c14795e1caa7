"""The audit trail: who read, exported, took over or erased what, when, and from where.

An append-only Redis stream (`{p}audit`): entries are only ever added (XADD) and read;
nothing in Supportbot edits or deletes them, and erasure records what it removed (ids and
counts, never the erased content). Entries older than the audit retention are trimmed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

ACTIONS = (
    "transcript.read",
    "conversations.list",
    "feedback.correct",
    "conversation.takeover",
    "conversation.handback",
    "conversation.close",
    "conversation.message",
    "export.create",
    "export.download",
    "key.create",
    "key.revoke",
    "privacy.erase",
    "privacy.purge",
    "insights.gaps",
    "kb.upload",
    "kb.remove",
    "model.promote",
    "model.rollback",
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    time: float
    actor: str
    role: str
    action: str
    target: str
    source: str  # client address, or "cli"
    details: dict[str, Any]


class AuditLog:
    def __init__(self, redis: Any, prefix: str = "sb:", *, retention_s: int = 365 * 24 * 3600) -> None:
        self._redis = redis
        self.key = f"{prefix}audit"
        self._retention_ms = retention_s * 1000

    async def record(
        self, actor: str, role: str, action: str, target: str = "", source: str = "", details: dict[str, Any] | None = None
    ) -> str:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        fields = {
            "time": repr(time.time()),
            "actor": actor,
            "role": role,
            "action": action,
            "target": target,
            "source": source,
            "details": json.dumps(details or {}, sort_keys=True),
        }
        entry_id = await self._redis.xadd(self.key, fields)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def list(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first, filtered; `since` inclusive, `until` exclusive (seconds since 1970)."""
        if until is not None and int(until * 1000) <= 0:
            return []  # nothing is older than 1970; Redis refuses an exclusive bound below its first id
        high = f"({int(until * 1000)}-0" if until is not None else "+"
        low = f"{int(since * 1000)}-0" if since is not None and since > 0 else "-"
        found: list[AuditEntry] = []
        while len(found) < limit:
            batch = await self._redis.xrevrange(self.key, high, low, count=500)
            if not batch:
                break
            for entry_id, raw in batch:
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                entry = AuditEntry(
                    entry_id.decode(),
                    float(fields["time"]),
                    fields["actor"],
                    fields["role"],
                    fields["action"],
                    fields["target"],
                    fields["source"],
                    json.loads(fields["details"]),
                )
                if (actor and entry.actor != actor) or (action and entry.action != action) or (target and entry.target != target):
                    continue
                found.append(entry)
                if len(found) == limit:
                    break
            high = f"({batch[-1][0].decode()}"
        return found

    async def trim(self) -> int:
        """Drop entries older than the retention; returns how many went."""
        cutoff = int(time.time() * 1000) - self._retention_ms
        return int(await self._redis.xtrim(self.key, minid=f"{cutoff}-0"))
