"""The `supportbot` command: nouns then verbs (`supportbot kb ingest`, ...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from redis.exceptions import RedisError

from knowledge_base.cli import EVAL_QUESTIONS, kb_app
from server.models_cli import models_app, train_command
from server.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

app = typer.Typer(help="Supportbot: a self-hosted customer-support assistant.", no_args_is_help=True, add_completion=False)
app.add_typer(kb_app, name="kb")
EVAL_TURNS = EVAL_QUESTIONS.with_name("turns.jsonl")  # labelled turns: key facts, traps, out of scope
# Held-out questions in visitors' words, written from the help center's text by people who never
# saw turns.jsonl (`bot eval --questions` this file). Not in the training job's exclusions: for
# comparing answer paths and embedders, not for gating trained models.
VISITORS_HELDOUT = EVAL_QUESTIONS.with_name("visitors_heldout.jsonl")
bot_app = typer.Typer(help="Evaluate whole turns: retrieval, generation and answer policy.", no_args_is_help=True)
app.add_typer(bot_app, name="bot")
keys_app = typer.Typer(help="API keys for support agents and admins (stored hashed in Redis).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
privacy_app = typer.Typer(help="Retention, erasure on request, encryption keys (docs/privacy.md).", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
feedback_app = typer.Typer(help="Ratings and corrections: the sink files and datasets for retraining.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.add_typer(models_app, name="models")
app.command("train")(train_command)


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
    from bot.conversations import ConversationNotFound, ConversationStore
    from bot.privacy.audit import AuditLog
    from bot.privacy.crypto import Sealer
    from bot.privacy.erasure import Privacy

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
    from bot.conversations import ConversationStore
    from bot.privacy.audit import AuditLog
    from bot.privacy.crypto import Sealer
    from bot.privacy.erasure import Privacy, parse_age

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
    from bot.privacy.crypto import Sealer, SealError

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
    from bot.feedback.sink import FeedbackSink
    from bot.privacy.crypto import Sealer

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

    from bot.feedback import datasets

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
    from bot.privacy.crypto import Sealer, SealError

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
        Path, typer.Option(help="JSONL of labelled turns: question, document_id, kind, split, key_facts, false_claims.")
    ] = EVAL_TURNS,
    split: Annotated[str, typer.Option(help="tune, heldout or all. Tune thresholds on tune; report on heldout.")] = "heldout",
    mode: Annotated[
        str | None,
        typer.Option(help="extractive or generative [default: what the server would run, from SUPPORTBOT_ANSWER_MODE]."),
    ] = None,
    compare: Annotated[str | None, typer.Option(help="A second answer mode, run on the same questions in the same run.")] = None,
    record: Annotated[
        bool,
        typer.Option(
            help="With generative and extractive compared: record whether the generator beat the composer (answer mode auto reads it)."
        ),
    ] = False,
    output: Annotated[Path | None, typer.Option(help="Write summaries and per-question rows as JSON here.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Use only the first N questions of the split (0: all).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=1024, help="Answer length budget when generating.")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Questions in flight at once.")] = 8,
    show: Annotated[bool, typer.Option(help="Print every question with its path, verdict and answer.")] = False,
) -> None:
    """Key facts present, false statements, contradiction traps and honest "not sure", per answer mode, side by side."""
    import asyncio

    from bot.answer_policy import write_record
    from bot.assistant import AnswerMode
    from bot.evaluation import BotEvalReport, evaluate_turns, evidence_by_document, load_turns, write_report
    from bot.generation.generator import Generator, TransformersGenerator
    from bot.generation.remote import OpenAICompatibleGenerator
    from knowledge_base.components import build_embedder, build_retriever
    from server.components import answer_mode, build_assistant, build_generator, served_generator_model

    settings: Settings = ctx.obj
    if split not in ("tune", "heldout", "all"):
        typer.echo(f"error: --split must be tune, heldout or all, not {split!r}", err=True)
        raise typer.Exit(2)
    try:
        modes = [AnswerMode(mode) if mode else answer_mode(settings).mode]
        if compare:
            modes.append(AnswerMode(compare))
        labelled = [t for t in load_turns(questions) if split == "all" or t.split == split]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if record and set(modes) != {AnswerMode.EXTRACTIVE, AnswerMode.GENERATIVE}:
        typer.echo("error: --record compares generative with extractive: pass --mode generative --compare extractive", err=True)
        raise typer.Exit(2)
    labelled = labelled[:limit] if limit else labelled
    if not labelled:
        typer.echo(f"error: no labelled turns in the {split} split of {questions}", err=True)
        raise typer.Exit(2)
    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    generator: Generator | None = build_generator(settings) if AnswerMode.GENERATIVE in modes else None
    if isinstance(generator, TransformersGenerator):
        generator.warm_up()
    evidence = evidence_by_document(retriever.snapshot.chunks)

    async def run() -> list[BotEvalReport]:
        try:
            reports = []
            for each in modes:
                assistant = build_assistant(
                    settings, retriever, embedder, generator, mode=each, max_new_tokens=max_new_tokens, first_text_deadline=False
                )
                await asyncio.to_thread(assistant.warm_up)  # as a server does before it is ready
                reports.append(await evaluate_turns(assistant, labelled, evidence, concurrency))
            return reports
        finally:
            if isinstance(generator, OpenAICompatibleGenerator):
                await generator.aclose()

    try:
        reports = asyncio.run(run())
    finally:
        if isinstance(generator, TransformersGenerator):
            generator.close()
    if show:
        for report in reports:
            for row in report.rows():
                verdict = "FALSE" if row["false_statement"] else ("facts" if row["key_facts"] else "-")
                typer.echo(
                    f"[{report.mode} {row['path']} {verdict}] {row['question']!r} -> {row['answer'][:160]!r} {row['why_false']}"
                )
    summaries = [r.summary() for r in reports]
    typer.echo(f"{len(labelled)} questions ({split} split of {questions.name}), index {retriever.snapshot.version}")
    rows = [
        ("key facts present (in scope)", "key_facts_present", "{:.3f}"),
        ("  of which in sure answers", "key_facts_sure", "{:.3f}"),
        ("  of which in the first quote", "key_facts_first", "{:.3f}"),
        ("false statements", "false_statements", "{}"),
        ("false statements per answer", "false_statement_rate", "{:.3f}"),
        ("contradiction traps failed", "trap_failures", "{}"),
        ("out of scope: not sure", "out_of_scope_not_sure", "{:.3f}"),
        ("  of which with a suggestion", "out_of_scope_suggested", "{:.3f}"),
        ("in scope: not sure", "in_scope_not_sure", "{:.3f}"),
        ("  of which with a suggestion", "in_scope_suggested", "{:.3f}"),
        ("follow-ups: key facts present", "follow_up_key_facts_present", "{:.3f}"),
        ("time to first text p50 (s)", "ttft_p50_s", "{}"),
        ("time to first text p95 (s)", "ttft_p95_s", "{}"),
    ]
    typer.echo(f"{'':32}" + "".join(f"{s['mode']:>14}" for s in summaries))
    for label, key, fmt in rows:
        typer.echo(f"{label:32}" + "".join(f"{fmt.format(s[key]):>14}" for s in summaries))
    for s in summaries:
        typer.echo(f"paths ({s['mode']}): {s['paths']}")
    if output:
        write_report(
            output, reports, {"questions_file": str(questions), "split": split, "index_version": retriever.snapshot.version}
        )
        typer.echo(f"wrote {output}")
    if record:
        by_mode = {s["mode"]: s for s in summaries}
        path = write_record(
            settings.data_dir,
            served_generator_model(settings)[1],
            retriever.snapshot.version,
            by_mode["generative"],
            by_mode["extractive"],
        )
        typer.echo(f"recorded {path}: answer mode auto now runs {answer_mode(settings).mode.value}")


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
