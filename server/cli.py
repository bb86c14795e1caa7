"""The `supportbot` command: nouns then verbs (`supportbot kb ingest`, ...)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from knowledge_base.cli import EVAL_QUESTIONS, kb_app
from server.settings import Settings

app = typer.Typer(help="Supportbot: a self-hosted customer-support assistant.", no_args_is_help=True, add_completion=False)
app.add_typer(kb_app, name="kb")
bot_app = typer.Typer(help="Evaluate whole turns: retrieval, generation and answer policy.", no_args_is_help=True)
app.add_typer(bot_app, name="bot")


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Settings come from SUPPORTBOT_* environment variables or a .env file."""
    try:
        ctx.obj = Settings()
    except ValueError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


@bot_app.command("eval")
def bot_eval(
    ctx: typer.Context,
    questions: Annotated[
        Path, typer.Option(help="JSONL of {question, document_id}; document_id null = out of scope.")
    ] = EVAL_QUESTIONS,
    limit: Annotated[int, typer.Option(min=0, help="Use only the first N in-scope and N out-of-scope questions (0: all).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=1024, help="Answer length budget.")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Questions in flight at once.")] = 8,
    show: Annotated[bool, typer.Option(help="Print every question with its path and answer.")] = False,
) -> None:
    """Share of answers citing the right article, fully supported, and out-of-scope questions answered "not sure"."""
    import asyncio

    from bot.evaluation import BotEvalReport, LabelledTurn, evaluate_turns
    from bot.generation import TransformersGenerator
    from bot.remote_generation import OpenAICompatibleGenerator
    from knowledge_base.components import build_embedder, build_retriever
    from retrieval.evaluation import load_questions
    from server.components import build_assistant, build_generator

    settings: Settings = ctx.obj
    labelled = [LabelledTurn(q.question, q.document_id) for q in load_questions(questions)]
    if limit:
        labelled = [q for q in labelled if q.document_id][:limit] + [q for q in labelled if not q.document_id][:limit]
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    generator = build_generator(settings)
    if isinstance(generator, TransformersGenerator):
        generator.warm_up()
    assistant = build_assistant(settings, retriever, embedder, generator, max_new_tokens=max_new_tokens)
    evidence: dict[str, str] = {}
    for chunk in retriever.snapshot.chunks:
        evidence[chunk.document_id] = evidence.get(chunk.document_id, "") + " " + chunk.text

    async def run() -> BotEvalReport:
        try:
            return await evaluate_turns(assistant, labelled, evidence, concurrency)
        finally:
            if isinstance(generator, OpenAICompatibleGenerator):
                await generator.aclose()

    try:
        report = asyncio.run(run())
    finally:
        if isinstance(generator, TransformersGenerator):
            generator.close()
    if show:
        for item, result in report.results:
            typer.echo(
                f"[{result.path.value}] {item.question!r} -> {result.answer[:160]!r} sources={[s.document_id for s in result.sources]}"
            )
    ttft = sorted(report.ttft_s)
    typer.echo(f"{report.in_scope} in-scope and {report.out_of_scope} out-of-scope questions; paths: {dict(report.paths)}")
    typer.echo(
        f"cited the right article:        {report.share(report.cited_right_article, report.in_scope):.3f} of in-scope questions"
    )
    supported = report.share(report.fully_supported, report.answered)
    generated = report.share(report.generated_supported, report.generated)
    typer.echo(f"all sentences supported:        {supported:.3f} of {report.answered} answers (independent lexical check)")
    typer.echo(f"  of which generated:           {generated:.3f} of {report.generated}; the rest quote the article (fallback)")
    typer.echo(f"out of scope answered not sure: {report.share(report.out_of_scope_not_sure, report.out_of_scope):.3f}")
    if ttft:
        typer.echo(f"time to first text: p50 {ttft[len(ttft) // 2]:.2f} s, p90 {ttft[int(len(ttft) * 0.9)]:.2f} s")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
) -> None:
    """Run the server; on first start it indexes the sample help center."""
    import asyncio
    import signal
    from types import FrameType

    import uvicorn

    from server.app import create_app
    from server.log_format import configure_json_logging

    settings: Settings = ctx.obj
    configure_json_logging()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) + 5,
    )

    class DrainingServer(uvicorn.Server):
        """SIGTERM: refuse new chats (1001), let answers in flight finish, then stop. A second signal stops at once."""

        draining = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            service = getattr(app.state, "chat", None)
            if self.draining or service is None or sig not in (signal.SIGTERM, signal.SIGINT):
                super().handle_exit(sig, frame)
                return
            self.draining = True
            logging.getLogger("supportbot.server").info("signal %d: draining for up to %g s", sig, settings.shutdown_drain_s)

            async def drain_then_exit() -> None:
                try:
                    await service.drain(settings.shutdown_drain_s)
                finally:
                    uvicorn.Server.handle_exit(self, sig, frame)

            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(drain_then_exit()))

    DrainingServer(config).run()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
