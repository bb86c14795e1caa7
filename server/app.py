"""The FastAPI application factory: `create_app(settings)` wires components into routes."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from bot.assistant import AnswerMode
from bot.conversations import ConversationStore
from bot.feedback.log import FeedbackLog
from bot.feedback.review import Review
from bot.feedback.sink import FeedbackSink
from bot.generation.generator import Generator, TransformersGenerator
from bot.insights.daily import InsightsReport, backfill
from bot.insights.gaps import ContentGaps
from bot.privacy.audit import AuditLog
from bot.privacy.crypto import Sealer, SealError
from bot.privacy.erasure import Privacy, check_encryption
from knowledge_base.components import build_builder, build_embedder, build_retriever
from retrieval.index_files import IndexFormatError
from retrieval.retriever import Retriever
from server import agent_api, insights_api, knowledge_api
from server.api_contract import ALWAYS, errors, install_allow_header
from server.auth import ApiKeys
from server.chat import ChatService
from server.components import answer_mode, build_assistant, build_generator
from server.events import EventHub
from server.index_reload import IndexReloader
from server.limits import RateLimiter
from server.metrics import Metrics, watch_event_loop
from server.model_swap import GeneratorSwap
from server.parent import supervisor_lost
from server.redis_server import EmbeddedRedis
from server.settings import Settings

log = logging.getLogger("supportbot.server")
STATIC = Path(__file__).resolve().parent / "static"
# A stop this long past its drain's deadline is stuck: every thread's stack goes to the log
# and the process exits (1), its embedded Redis with it, instead of hanging until a SIGKILL.
STOP_DEADLINE_AFTER_DRAIN_S = 60.0
# The review page shows visitors' text: no inline script, no framing, no sniffing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


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


async def _retention(settings: Settings, privacy: Privacy, audit: AuditLog) -> None:
    """Hourly: delete sink files past the feedback retention and trim the audit trail.
    Conversations need no sweep: every key of theirs expires in Redis."""
    while True:
        try:
            files = await asyncio.to_thread(privacy.delete_old_sink_files, settings.feedback_retention_days * 86400)
            trimmed = await audit.trim()
            if files or trimmed:
                log.info("retention: deleted %d feedback files, trimmed %d audit entries", len(files), trimmed)
        except (RedisError, OSError) as exc:
            log.warning("retention sweep failed (%s); next try in an hour", exc)
        await asyncio.sleep(3600)


async def _backfill_insights(store: ConversationStore) -> None:
    """Once per Redis: count conversations written before the per-day insights existed.
    One worker does it (a lock); conversations it has counted are marked, so a rerun after a
    crash counts only the rest."""
    done, lock = f"{store.prefix}insights:backfilled", f"{store.prefix}insights:backfill-lock"
    try:
        if await store.redis.exists(done) or not await store.redis.set(lock, "1", nx=True, ex=3600):
            return
        counted = await backfill(store, store.insights)
        await store.redis.set(done, str(counted))
        if counted:
            log.info("insights: counted %d conversations recorded before per-day figures existed", counted)
    except RedisError as exc:
        log.warning("insights backfill failed (%s); the next start tries again", exc)
        with contextlib.suppress(RedisError):
            await store.redis.delete(lock)


def _drain_on_signals(service: ChatService, drain_s: float) -> None:
    """SIGTERM or SIGINT: refuse new chats (close 1001), let answers in flight finish, then
    pass the signal to the handler that was there (uvicorn's, which stops the server). The
    same signal again stops at once; the other kind while draining does not, because Ctrl+C
    in a terminal reaches the workers of `serve --workers N` as SIGINT and then again as the
    supervisor's SIGTERM.

    Installed by the lifespan, after uvicorn has installed its own handlers, so the same code
    drains a single server and each worker that uvicorn's supervisor spawns. Off the main
    thread (an in-process test client) there are no signals.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    # A server that hangs can say where: `kill -USR1 <pid>` writes every thread's stack to
    # its log. So does a stop still not done a minute after its drain's deadline, which
    # then exits: a thread that never ends (a model's batching thread) must not hold it up.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    loop = asyncio.get_running_loop()
    received: set[int] = set()
    draining: set[asyncio.Task[None]] = set()

    def wrap(stop: Callable[[int, FrameType | None], object]) -> Callable[[int, FrameType | None], None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if signum in received:
                stop(signum, frame)
                return
            received.add(signum)
            if draining:
                return
            log.info("signal %d: draining for up to %g s", signum, drain_s)
            faulthandler.dump_traceback_later(drain_s + STOP_DEADLINE_AFTER_DRAIN_S, exit=True)

            async def drain_then_stop() -> None:
                try:
                    await service.drain(drain_s)
                finally:
                    stop(signum, frame)

            draining.add(loop.create_task(drain_then_stop()))  # Python runs handlers on the loop's (main) thread

        return on_signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        stop = signal.getsignal(sig)
        if callable(stop):
            signal.signal(sig, wrap(stop))


async def _sample_queue_depth(metrics: Metrics, swap: GeneratorSwap) -> None:
    """Once a second, in every worker: a scrape reaches one worker but reports the sum of all.
    Of the generator serving now (a promotion swaps it)."""
    while True:
        generator = swap.generator
        metrics.queue_depth.set(len(generator.active_request_ids()) if isinstance(generator, TransformersGenerator) else 0)
        await asyncio.sleep(1)


def _set_generator(app: FastAPI, generator: Generator | None, mode: AnswerMode) -> None:
    """What /readyz reports after a promoted model is swapped in."""
    app.state.generator, app.state.answer_mode = generator, mode


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

        embedded = None
        redis_url = settings.redis_url
        if redis_url is None:
            embedded = EmbeddedRedis(settings.data_dir / "redis")
            redis_url = await embedded.start_async()
        # A bounded pool that makes callers wait for a free connection: a burst of chats queues
        # for a few milliseconds instead of failing with "Too many connections".
        pool = BlockingConnectionPool.from_url(
            redis_url,
            max_connections=settings.redis_max_connections,
            timeout=5,
            socket_timeout=15,
            socket_connect_timeout=2,
            health_check_interval=10,
        )
        redis = Redis(connection_pool=pool)
        # Before the model loads: a server that could not read its own data must stop at once.
        sealer = Sealer(settings.encryption_key_list)
        try:
            said = await check_encryption(redis, settings.redis_prefix, sealer)
        except SealError as exc:
            log.critical("refusing to start: %s", exc)
            await redis.aclose()
            if embedded is not None:
                await run_in_threadpool(embedded.stop)
            raise RuntimeError(f"refusing to start: {exc}") from None
        (log.info if sealer.enabled else log.warning)(said)
        decision = answer_mode(settings)
        log.info("answer mode %s: %s", decision.mode.value, decision.reason)
        # The generator loads only when answers are generated: an extractive server starts in
        # seconds and holds a fraction of the memory.
        generator = build_generator(settings) if decision.mode is AnswerMode.GENERATIVE else None
        if isinstance(generator, TransformersGenerator):
            await run_in_threadpool(generator.warm_up)
        app.state.generator = generator
        app.state.answer_mode = decision.mode
        app.state.redis = redis
        store = ConversationStore(
            redis,
            prefix=settings.redis_prefix,
            ttl_s=settings.conversation_ttl_s,
            sealer=sealer,
            insights_retention_s=settings.insights_retention_days * 86400,
        )
        feedback = FeedbackLog(store)
        limiter = RateLimiter(redis, settings.redis_prefix)
        events = EventHub(redis, settings.redis_prefix)
        await events.start()
        sink = FeedbackSink(
            redis, settings.feedback_dir, prefix=settings.redis_prefix, sealer=sealer, claim_idle_s=settings.feedback_claim_idle_s
        )
        sink_task = asyncio.create_task(sink.run(), name="feedback-sink")
        audit = AuditLog(redis, settings.redis_prefix, retention_s=settings.audit_retention_days * 86400)
        privacy = Privacy(store, settings.feedback_dir)
        retention_task = asyncio.create_task(_retention(settings, privacy, audit), name="retention")
        tasks = [sink_task, retention_task, asyncio.create_task(_backfill_insights(store), name="insights-backfill")]
        if embedded is not None:
            tasks.append(asyncio.create_task(embedded.watch(on_restart=metrics.redis_restarts.inc), name="redis-watch"))
        assistant = build_assistant(settings, retriever, embedder, generator, mode=decision.mode)
        await run_in_threadpool(assistant.warm_up)
        reloader = IndexReloader(
            retriever,
            settings.index_root,
            metrics,
            interval_s=settings.index_reload_interval_s,
            # The assistant answering then: a promoted model may have replaced this one (server/model_swap.py).
            after_swap=lambda: app.state.chat.assistant.warm_up(),
        )
        tasks.append(asyncio.create_task(reloader.run(), name="index-reload"))
        app.state.index_reloader = reloader
        app.state.kb_builder = build_builder(settings, embedder)  # uploads over the admin API (server/knowledge_api.py)
        app.state.store, app.state.feedback, app.state.limiter = store, feedback, limiter
        app.state.review = Review(store, feedback)
        app.state.insights = InsightsReport(store.insights, redis)
        app.state.gaps = ContentGaps(store, embedder, retriever)
        app.state.audit, app.state.privacy, app.state.sealer = audit, privacy, sealer
        app.state.keys = ApiKeys(redis, settings.redis_prefix)
        app.state.chat = ChatService(settings, store, assistant, metrics, events, feedback, limiter)
        swap = GeneratorSwap(
            settings,
            app.state.chat,
            lambda model, mode: build_assistant(settings, retriever, embedder, model, mode=mode),
            generator,
            on_swap=lambda model, mode: _set_generator(app, model, mode),
        )
        app.state.generator_swap = swap
        tasks.append(asyncio.create_task(_sample_queue_depth(metrics, swap), name="queue-depth"))
        tasks.append(asyncio.create_task(watch_event_loop(metrics.loop_lag), name="loop-lag"))
        if settings.model_watch_interval_s > 0:
            tasks.append(asyncio.create_task(swap.run(settings.model_watch_interval_s), name="model-watch"))
        log.info("ready: answers by %s, redis %s", assistant.model_id, "embedded" if embedded else "external")
        _drain_on_signals(app.state.chat, settings.shutdown_drain_s)
        try:
            yield
        finally:
            await app.state.chat.drain(0)
            await events.stop()
            for task in tasks:  # the Redis watch included: it must not restart what is stopped below
                task.cancel()
            # Bounded: a task stuck in its own clean-up (a model swap closing a model) must not
            # keep the generator and Redis below from being stopped.
            ended, stuck = await asyncio.wait(tasks, timeout=15)
            for task in ended:  # retrieved, as awaiting each one did: a task that had failed says so
                if not task.cancelled() and task.exception() is not None:
                    log.error("%s had failed: %r", task.get_name(), task.exception())
            if stuck:
                log.error("stopping without waiting for %s", ", ".join(sorted(t.get_name() for t in stuck)))
            await swap.close()  # the generator serving now: the first, or the one swapped in
            await redis.aclose()
            if embedded is not None:
                await run_in_threadpool(embedded.stop)
            metrics.process_stopped()

    metrics = Metrics()
    app = FastAPI(title="Supportbot", version="0.1.0", lifespan=lifespan)
    app.state.chat = None
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(agent_api.router)
    app.include_router(insights_api.router)
    app.include_router(knowledge_api.router)
    install_allow_header(app)

    @app.exception_handler(RedisError)
    async def redis_unavailable(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return JSONResponse(
            {"detail": {"code": "unavailable", "message": "the service is temporarily unavailable; retry in a few seconds"}},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get("/agent", include_in_schema=False)
    async def agent_page() -> FileResponse:
        """The review page for support agents (it asks for an API key)."""
        return FileResponse(STATIC / "agent.html", headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        """A fake storefront with the chat widget embedded, as a customer's site would have it."""
        return FileResponse(STATIC / "demo.html", headers={"Cache-Control": "no-cache"})

    @app.get("/widget.js", include_in_schema=False)
    async def widget() -> FileResponse:
        """The chat widget: `<script src="https://HOST/widget.js" data-title="..." async></script>`."""
        return FileResponse(
            STATIC / "widget.js",
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300", "Cross-Origin-Resource-Policy": "cross-origin"},
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(GZipMiddleware, minimum_size=1024)

    @app.get("/healthz", responses={503: {"description": "A worker that outlived its supervisor"}})
    async def healthz() -> JSONResponse:
        """The process is alive, and a worker of `serve --workers` still has its supervisor."""
        if supervisor_lost(settings.supervisor_pid):
            return JSONResponse({"status": "supervisor lost"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", responses={503: {"description": "Not ready: the same body, saying which check failed."}})
    async def readyz(request: Request) -> JSONResponse:
        """Redis answers, the index and the model are loaded: chats can be served."""
        checks: dict[str, str] = {}
        retriever: Retriever | None = getattr(request.app.state, "retriever", None)
        checks["index"] = retriever.snapshot.version if retriever is not None else "not loaded"
        reloader: IndexReloader | None = getattr(request.app.state, "index_reloader", None)
        if reloader is not None and reloader.error is not None:
            # Still ready: the version above is served; the newer one could not be loaded.
            checks["index_reload"] = f"failed: {reloader.error}"
        mode = getattr(request.app.state, "answer_mode", None)
        if mode is AnswerMode.EXTRACTIVE:
            checks["generator"] = "not needed"  # the composer answers; no model is loaded
        else:
            checks["generator"] = "loaded" if getattr(request.app.state, "generator", None) is not None else "not loaded"
        checks["answer_mode"] = mode.value if mode is not None else "not decided"
        service: ChatService | None = request.app.state.chat
        checks["model"] = service.assistant.model_id if service is not None else "not loaded"  # who writes answers now
        redis: Redis | None = getattr(request.app.state, "redis", None)
        try:
            checks["redis"] = "ok" if redis is not None and await redis.ping() else "not connected"
        except RedisError as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        ready = retriever is not None and checks["generator"] in ("loaded", "not needed") and checks["redis"] == "ok"
        return JSONResponse({"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition."}},
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/v1/chat")
    async def chat(ws: WebSocket) -> None:
        service: ChatService | None = ws.app.state.chat
        if service is None:
            await ws.accept()
            await ws.close(code=1013, reason="starting up, try again shortly")
            return
        await service.handle(ws)

    @app.get("/v1/search", response_model=SearchOut, responses=errors(*ALWAYS))
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
