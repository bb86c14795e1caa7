"""IndexReloader on a real index: a new version is swapped in, a search in flight finishes on
the snapshot it started with, and a broken version leaves the old one served."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever
from server.index_reload import IndexReloader
from server.metrics import Metrics


class GatedEmbedder:
    """The real embedder, except that a query can be held until the test lets it go (a slow search)."""

    def __init__(self, inner: SentenceEmbedder) -> None:
        self._inner = inner
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.hold:
            self.entered.set()
            assert self.release.wait(30)
        return self._inner.embed(texts)


def test_swap_in_flight_and_broken_versions(writable_sample_index: Path, embedder: SentenceEmbedder, tmp_path: Path) -> None:
    gated = GatedEmbedder(embedder)
    retriever = Retriever(writable_sample_index, gated)  # type: ignore[arg-type]
    metrics = Metrics()
    swaps: list[str] = []
    reloader = IndexReloader(
        retriever, writable_sample_index, metrics, interval_s=0.1, after_swap=lambda: swaps.append(retriever.snapshot.version)
    )
    article = tmp_path / "engraving.md"
    article.write_text("# Engraving\n\nBrewlo engraves up to 20 characters on the lid for 9 EUR.\n")

    async def scenario() -> None:
        assert await reloader.check() is False  # first look: nothing new
        gated.hold = True
        in_flight = asyncio.create_task(asyncio.to_thread(retriever.search, "Can you engrave my kettle?", 1))
        await asyncio.to_thread(gated.entered.wait, 30)
        gated.hold = False
        report = await asyncio.to_thread(KnowledgeBaseBuilder(writable_sample_index, embedder).ingest, [article])
        assert report.version == "000002"
        assert await reloader.check() is True and swaps == ["000002"]
        gated.release.set()
        old = await in_flight
        assert old.index_version == "000001"  # finished on the snapshot it started with
        new = await asyncio.to_thread(retriever.search, "Can you engrave my kettle?", 1)
        assert new.index_version == "000002" and new.passages[0].document_id == "engraving"

        versions = writable_sample_index / "versions"
        shutil.copytree(versions / "000002", versions / "000003")
        (versions / "000003" / "chunks.jsonl").write_text("{}\n")
        (writable_sample_index / ".CURRENT.t").write_text("000003\n")
        os.replace(writable_sample_index / ".CURRENT.t", writable_sample_index / "CURRENT")
        assert await reloader.check() is False
        assert reloader.error is not None and "corrupt" in reloader.error
        assert retriever.snapshot.version == "000002"
        assert await reloader.check() is False and reloader.error is not None  # not retried until CURRENT changes

    asyncio.run(scenario())
    exposition = metrics.exposition().decode()
    assert "supportbot_index_version 2.0" in exposition
    assert 'supportbot_index_reloads_total{result="failed"} 1.0' in exposition
    assert 'supportbot_index_reloads_total{result="swapped"} 1.0' in exposition
