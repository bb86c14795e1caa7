"""Live index reload: every worker notices a new index version within seconds and swaps it in.

The writer (`supportbot kb ingest`, or the admin API) builds a complete version beside the
live one and then replaces `CURRENT` (knowledge_base/index_writer.py). Each worker checks
that file's identity (inode, size, mtime) every `index_reload_interval_s`: a `stat`, nothing
more, while nothing changes. When it changes, the new snapshot is loaded and checked in a
worker thread (`Retriever.reload`), then one reference is swapped: searches already running
finish on the snapshot they started with. A broken version (a checksum that does not match,
a missing file, another embedding model) is logged and reported on `/readyz` and
`/metrics`, and the worker keeps serving the version it had; the next change of `CURRENT`
is tried again. A stat works for every writer on any machine that sees the directory, so no
notice over Redis is needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from retrieval.index_files import CURRENT_FILE, IndexFormatError
from retrieval.retriever import Retriever
from server.metrics import Metrics

log = logging.getLogger("supportbot.server")

Signature = tuple[int, int, int] | None


class IndexReloader:
    """Watches `index_root/CURRENT` and swaps the retriever's snapshot when it changes."""

    def __init__(
        self,
        retriever: Retriever,
        index_root: Path,
        metrics: Metrics,
        *,
        interval_s: float = 2.0,
        after_swap: Callable[[], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._retriever = retriever
        self._pointer = index_root / CURRENT_FILE
        self._metrics = metrics
        self._interval_s = interval_s
        self._after_swap = after_swap
        self._seen: Signature | str = "not checked yet"  # the first check reloads: CURRENT may have moved since start-up
        self._lock = asyncio.Lock()
        self.error: str | None = None  # why the newest version could not be loaded; None when it was
        self._publish()

    def _signature(self) -> Signature:
        try:
            stat = os.stat(self._pointer)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _publish(self) -> None:
        try:
            version = self._retriever.snapshot.version
        except IndexFormatError:
            return
        self._metrics.index_version.set(int(version) if version.isdigit() else -1)

    def _reload(self) -> bool:
        swapped = self._retriever.reload()
        if swapped and self._after_swap is not None:
            self._after_swap()  # e.g. the composer embeds the new passages now, not on a visitor's turn
        return swapped

    async def check(self) -> bool:
        """Swap in the version CURRENT names if it changed; True if this call swapped."""
        async with self._lock:
            signature = self._signature()
            if signature == self._seen:
                return False
            self._seen = signature
            before = self._retriever.snapshot.version
            try:
                swapped = await asyncio.to_thread(self._reload)
            except (IndexFormatError, OSError, ValueError) as exc:
                self.error = str(exc)
                self._metrics.index_reloads.labels("failed").inc()
                log.error("index reload failed; still serving version %s: %s", before, exc)
                return False
            self.error = None
            if swapped:
                self._metrics.index_reloads.labels("swapped").inc()
                self._publish()
                log.info("index version %s swapped in (was %s)", self._retriever.snapshot.version, before)
            return swapped

    async def run(self) -> None:
        """Check every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except Exception:  # a watcher that dies would leave the worker on an old index for good
                log.exception("index reload check failed; trying again in %g s", self._interval_s)
