"""The FastAPI application factory: `create_app(settings)` wires components into routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from knowledge_base.components import build_builder, build_embedder, build_retriever
from retrieval.index_files import IndexFormatError
from retrieval.retriever import Retriever
from server.settings import Settings

log = logging.getLogger("supportbot.server")


class PassageOut(BaseModel):
    document_id: str
    title: str
    heading: str
    url: str | None
    snippet: str
    score: float
    confidence: float


class SearchOut(BaseModel):
    query: str
    confidence: float
    index_version: str
    passages: list[PassageOut]


def get_retriever(request: Request) -> Retriever:
    retriever: Retriever | None = getattr(request.app.state, "retriever", None)
    if retriever is None:
        raise HTTPException(503, "the knowledge base index is not loaded yet")
    return retriever


RetrieverDep = Annotated[Retriever, Depends(get_retriever)]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedder = build_embedder(settings)
        await run_in_threadpool(embedder.warm_up)  # ready means the model is loaded, not loading on first use
        report = await run_in_threadpool(build_builder(settings, embedder).ensure_built, [settings.sample_kb_dir])
        if report is not None:
            log.info("built the sample knowledge base index: %d documents, version %s", len(report.added), report.version)
        retriever = build_retriever(settings, embedder)
        await run_in_threadpool(retriever.reload)
        app.state.retriever = retriever
        yield

    app = FastAPI(title="Supportbot", version="0.1.0", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> dict[str, str]:
        """The index is loaded and searches can be served."""
        retriever = get_retriever(request)
        return {"status": "ready", "index_version": retriever.snapshot.version}

    @app.get("/v1/search", response_model=SearchOut)
    async def search(
        retriever: RetrieverDep,
        q: Annotated[str, Query(min_length=1, max_length=1000, description="The question.")],
        k: Annotated[int, Query(ge=1, le=20)] = settings.retrieval_top_k,
    ) -> SearchOut:
        """Public help-center passages for a question (internal articles are never returned)."""
        if not q.strip():
            raise HTTPException(422, "q is blank")
        try:
            result = await run_in_threadpool(retriever.search, q, k)
        except IndexFormatError as exc:
            raise HTTPException(503, str(exc)) from None
        return SearchOut(
            query=result.query,
            confidence=result.confidence,
            index_version=result.index_version,
            passages=[
                PassageOut(
                    document_id=p.document_id,
                    title=p.title,
                    heading=p.chunk.heading,
                    url=p.url,
                    snippet=p.text[:500],
                    score=p.score,
                    confidence=p.confidence,
                )
                for p in result.passages
            ],
        )

    return app
