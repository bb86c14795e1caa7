"""The `supportbot` command: nouns then verbs (`supportbot kb ingest`, ...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from redis.exceptions import RedisError

from knowledge_base.cli import EVAL_QUESTIONS, kb_app
from server.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

app = typer.Typer(help="Supportbot: a self-hosted customer-support assistant.", no_args_is_help=True, add_completion=False)
app.add_typer(kb_app, name="kb")
bot_app = typer.Typer(help="Evaluate whole turns: retrieval, generation and answer policy.", no_args_is_help=True)
app.add_typer(bot_app, name="bot")
keys_app = typer.Typer(help="API keys for support agents and admins (stored hashed in Redis).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
privacy_app = typer.Typer(help="Retention, erasure on request, encryption keys (docs/privacy.md).", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
feedback_app = typer.Typer(help="Ratings and corrections: the sink files and datasets for retraining.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


def _with_redis(settings: Settings, work: Callable[[Redis], Awaitable[T]]) -> T:
    """Run `work` against the configured Redis, or the embedded one of this data directory."""
    import asyncio

    from server.redis_server import RedisStartError, redis_for_commands

    async def run() -> T:
        async with redis_for_commands(settings.redis_url, settings.data_dir) as redis:
            return await work(redis)

    try:
        return asyncio.run(run())
    except (RedisStartError, RedisError, OSError) as exc:
        typer.echo(f"error: Redis is not reachable: {exc}", err=True)
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help="agent (review, correct, take over) or admin (also keys and exports).")],
    name: Annotated[str, typer.Option(help="Who holds the key; shown to visitors when this agent joins a chat.")],
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from server.auth import ROLES, ApiKeys

    settings: Settings = ctx.obj
    if role not in ROLES:
        typer.echo(f"error: --role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)

    async def create(redis: Redis) -> str:
        info, key = await ApiKeys(redis, settings.redis_prefix).create(role, name)  # type: ignore[arg-type]
        typer.echo(f"created {info.role} key {info.key_id} for {info.name!r}; it is shown only now:", err=True)
        return key

    try:
        typer.echo(_with_redis(settings, create))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """Key ids, roles and names (never the keys)."""
    from server.auth import ApiKeys, KeyInfo

    settings: Settings = ctx.obj

    async def listing(redis: Redis) -> list[KeyInfo]:
        return await ApiKeys(redis, settings.redis_prefix).list()

    for info in _with_redis(settings, listing):
        typer.echo(f"{info.key_id}\t{info.role}\t{info.name}")


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The id from `keys list`.")]) -> None:
    """Revoke a key at once, on every worker."""
    from server.auth import ApiKeys

    settings: Settings = ctx.obj

    async def revoke(redis: Redis) -> bool:
        return await ApiKeys(redis, settings.redis_prefix).revoke(key_id)

    if not _with_redis(settings, revoke):
        typer.echo(f"error: no key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _print_report(report: dict[str, object]) -> None:
    import json

    typer.echo(json.dumps(report, indent=2))


@privacy_app.command("erase")
def privacy_erase(
    ctx: typer.Context,
    conversation: Annotated[list[str] | None, typer.Option(help="A conversation id (repeatable).")] = None,
    user: Annotated[
        str | None, typer.Option(help="The site's user id (the widget's data-user-id): all their conversations.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="List what would be removed; change nothing.")] = False,
) -> None:
    """Delete a visitor's conversations, messages, feedback events and sink-file lines; print what went."""
    from bot.audit import AuditLog
    from bot.conversations import ConversationNotFound, ConversationStore
    from bot.crypto import Sealer
    from bot.privacy import Privacy

    settings: Settings = ctx.obj
    if bool(conversation) == bool(user):
        typer.echo("error: give --conversation (one or more) or --user, not both", err=True)
        raise typer.Exit(2)

    async def erase(redis: Redis) -> dict[str, object]:
        store = ConversationStore(redis, prefix=settings.redis_prefix, sealer=Sealer(settings.encryption_key_list))
        privacy = Privacy(store, settings.feedback_dir)
        ids = list(conversation or [])
        for cid in ids:
            try:
                await store.get(cid)
            except ConversationNotFound:
                typer.echo(f"error: no conversation {cid!r}; nothing changed", err=True)
                raise typer.Exit(1) from None
        if user:
            ids = await privacy.conversations_of_user(user)
            if not ids:
                typer.echo(f"error: no conversations of user {user!r}; nothing changed", err=True)
                raise typer.Exit(1)
        report = (await privacy.erase(ids, dry_run=dry_run)).as_dict()
        if not dry_run:
            details = {k: v for k, v in report.items() if k != "dry_run"}
            await AuditLog(redis, settings.redis_prefix).record(
                _cli_actor(), "admin", "privacy.erase", f"user:{user}" if user else ",".join(ids), "cli", details
            )
        return report

    _print_report(_with_redis(settings, erase))


@privacy_app.command("purge")
def privacy_purge(
    ctx: typer.Context,
    older_than: Annotated[str, typer.Option(help="Age such as 30d, 12h: conversations idle that long, sink files that old.")],
    dry_run: Annotated[bool, typer.Option(help="List what would be removed; change nothing.")] = False,
) -> None:
    """Remove everything older than a cutoff now (the server also expires data by itself)."""
    from bot.audit import AuditLog
    from bot.conversations import ConversationStore
    from bot.crypto import Sealer
    from bot.privacy import Privacy, parse_age

    settings: Settings = ctx.obj
    try:
        age = parse_age(older_than)
    except ValueError as exc:
        typer.echo(f"error: --older-than: {exc}", err=True)
        raise typer.Exit(2) from None

    async def purge(redis: Redis) -> dict[str, object]:
        store = ConversationStore(redis, prefix=settings.redis_prefix, sealer=Sealer(settings.encryption_key_list))
        report = (await Privacy(store, settings.feedback_dir).purge(age, dry_run=dry_run)).as_dict()
        if not dry_run:
            counts = {k: len(v) if isinstance(v, list) else v for k, v in report.items() if k != "dry_run"}
            await AuditLog(redis, settings.redis_prefix).record(_cli_actor(), "admin", "privacy.purge", older_than, "cli", counts)
        return report

    _print_report(_with_redis(settings, purge))


@privacy_app.command("new-key")
def privacy_new_key(key_id: Annotated[str, typer.Argument(help="A short name for the key, e.g. k2026a.")] = "k1") -> None:
    """Print a new encryption key entry for SUPPORTBOT_ENCRYPTION_KEYS (put it first to rotate)."""
    from bot.crypto import Sealer, SealError

    entry = f"{key_id}:{Sealer.new_key()}"
    try:
        Sealer([entry])
    except SealError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(entry)


@feedback_app.command("sink")
def feedback_sink(ctx: typer.Context) -> None:
    """Copy feedback waiting in Redis into the sink files now (a running server does this continuously)."""
    from bot.crypto import Sealer
    from bot.feedback_sink import FeedbackSink

    settings: Settings = ctx.obj

    async def drain(redis: Redis) -> int:
        sink = FeedbackSink(
            redis,
            settings.feedback_dir,
            prefix=settings.redis_prefix,
            consumer="cli",
            sealer=Sealer(settings.encryption_key_list),
        )
        return await sink.run_once()

    typer.echo(f"wrote {_with_redis(settings, drain)} events to {settings.feedback_dir}")


def _timestamp(value: str | None, option: str) -> float | None:
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        typer.echo(f"error: {option} must be an ISO 8601 date or time, e.g. 2026-11-01 or 2026-11-01T09:30:00Z", err=True)
        raise typer.Exit(2) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@feedback_app.command("export")
def feedback_export(
    ctx: typer.Context,
    format: Annotated[str, typer.Option("--format", help="sft (good examples) or preference (chosen/rejected pairs).")],
    output: Annotated[str, typer.Option(help="JSONL file to write (a manifest goes beside it), or - for stdout.")],
    since: Annotated[str | None, typer.Option(help="Feedback given at or after this time (ISO 8601, UTC if no zone).")] = None,
    until: Annotated[str | None, typer.Option(help="Feedback given before this time.")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(help="sft: up and/or correction (default both); preference: down = only down-rated answers."),
    ] = None,
    keep_pii: Annotated[
        bool, typer.Option(help="Keep emails, phone and card numbers, addresses (on-premise jobs only).")
    ] = False,
    after: Annotated[
        str | None, typer.Option(help="Watermark from an earlier manifest: only feedback that arrived since.")
    ] = None,
) -> None:
    """A dataset for a retraining job from the feedback sink files (docs/datasets.md)."""
    import json
    import sys

    from bot import datasets

    settings: Settings = ctx.obj
    if format not in datasets.SCHEMAS:
        typer.echo("error: --format must be sft or preference", err=True)
        raise typer.Exit(2)
    options = datasets.ExportOptions(
        format,  # type: ignore[arg-type]
        since=_timestamp(since, "--since"),
        until=_timestamp(until, "--until"),
        labels=tuple(label or ()),
        keep_pii=keep_pii,
        after=after,
    )
    from bot.crypto import Sealer, SealError

    try:
        events, problems = datasets.read_events(settings.feedback_dir, Sealer(settings.encryption_key_list))
    except SealError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    try:
        export = datasets.build(events, options)
    except datasets.ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output == "-":
        sys.stdout.buffer.write(export.jsonl())
        typer.echo(json.dumps(export.manifest, sort_keys=True), err=True)
        return
    destination = Path(output)
    if destination.is_dir():
        typer.echo(f"error: {output} is a directory; name the file to write", err=True)
        raise typer.Exit(2)
    manifest = datasets.write(export, destination)
    typer.echo(
        f"wrote {export.manifest['records']} records to {destination} (manifest {manifest}); watermark {export.manifest['watermark']}"
    )


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
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Server processes on this port, sharing one Redis [default: SUPPORTBOT_WORKERS]."),
    ] = None,
) -> None:
    """Run the server; on first start it indexes the sample help center."""
    from server.serving import serve as run_server

    settings: Settings = ctx.obj
    run_server(settings, host, port, workers or settings.workers)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
