"""`supportbot kb ...`: ingest, search, stats, remove and evaluate the knowledge base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from knowledge_base.builder import IngestReport
from knowledge_base.components import KnowledgeBaseSettings, build_builder, build_retriever
from retrieval.confidence import ConfidenceCalibrator
from retrieval.index_files import CALIBRATION_FILE, IndexFormatError, current_version_dir, read_manifest
from retrieval.types import SearchFilters

EVAL_QUESTIONS = Path(__file__).resolve().parent / "samples" / "eval" / "questions.jsonl"

kb_app = typer.Typer(help="Build, inspect and evaluate the knowledge base index.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def print_report(report: IngestReport) -> None:
    for path, message in sorted(report.errors.items()):
        errors.print(f"[red]error[/red] {path}: {message}", highlight=False, soft_wrap=True)
    console.print(
        f"added {len(report.added)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
        f"removed {len(report.removed)} documents; {report.chunks_embedded} chunks embedded; "
        + (f"index version {report.version}" if report.changed else f"index unchanged (version {report.version or 'none'})"),
        highlight=False,
    )


def exit_code(report: IngestReport) -> int:
    """0: all good; 1: nothing ingested and errors; 2: some files failed, the rest ingested."""
    if not report.errors:
        return 0
    return 2 if (report.added or report.updated or report.unchanged or report.removed) else 1


@kb_app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (Markdown, HTML, text, PDF, FAQ CSV/JSONL).")],
) -> None:
    """Add or update documents; a folder's documents that no longer exist are removed.

    Exit code 0 when every file was ingested, 2 when some failed (the rest were), 1 when
    nothing could be ingested.
    """
    settings: KnowledgeBaseSettings = ctx.obj
    builder = build_builder(settings)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=errors, transient=True
    ) as bar:
        task = bar.add_task("loading", total=None)

        def progress(done: int, total: int, path: str) -> None:
            bar.update(task, completed=done, total=total, description=f"loading {Path(path).name[:40]}")

        try:
            report = builder.ingest(paths, progress=progress)
        except IndexFormatError as exc:
            errors.print(f"[red]error[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
    print_report(report)
    raise typer.Exit(exit_code(report))


@kb_app.command()
def remove(
    ctx: typer.Context,
    document_ids: Annotated[list[str], typer.Argument(help="Document ids (a FAQ file id removes all its entries).")],
) -> None:
    """Remove documents from the index by id."""
    report = build_builder(ctx.obj).remove(document_ids)
    print_report(report)
    raise typer.Exit(exit_code(report))


@kb_app.command()
def search(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="What a user would ask.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=50, help="Passages to show.")] = 5,
    internal: Annotated[bool, typer.Option(help="Include internal (agent-only) passages.")] = False,
) -> None:
    """Print the ranked passages for a question, with scores and confidence."""
    retriever = build_retriever(ctx.obj)
    try:
        result = retriever.search(question, k=k, filters=SearchFilters.for_agents() if internal else SearchFilters())
    except (IndexFormatError, ValueError) as exc:
        errors.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(
        f"confidence {result.confidence:.2f}  (index {result.index_version}, {sum(result.timings_ms.values()):.1f} ms)",
        highlight=False,
    )
    for rank, passage in enumerate(result.passages, start=1):
        heading = f" > {passage.chunk.heading}" if passage.chunk.heading else ""
        console.print(
            f"\n[bold]{rank}. {passage.title}{heading}[/bold]  [dim]{passage.document_id}"
            f"{'  ' + passage.url if passage.url else ''}  {passage.chunk.visibility.value}[/dim]",
            highlight=False,
        )
        console.print(
            f"   fused {passage.score:.4f}  cosine {passage.dense_score:.3f}  bm25 {passage.lexical_score:.2f}  confidence {passage.confidence:.2f}",
            highlight=False,
        )
        snippet = " ".join(passage.text.split())
        console.print(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}", highlight=False)


@kb_app.command()
def stats(ctx: typer.Context) -> None:
    """Show the live index version, model, counts and documents per kind."""
    settings: KnowledgeBaseSettings = ctx.obj
    try:
        version_dir = current_version_dir(settings.index_root)
    except IndexFormatError as exc:
        errors.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if version_dir is None:
        errors.print(f"no index at {settings.index_root}: run `supportbot kb ingest PATH` first")
        raise typer.Exit(1)
    manifest = read_manifest(version_dir)
    table = Table(show_header=False, box=None)
    size = sum(f.stat().st_size for f in version_dir.iterdir())
    kinds: dict[str, int] = {}
    visibility: dict[str, int] = {}
    for entry in manifest.documents.values():
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
        visibility[entry.visibility] = visibility.get(entry.visibility, 0) + 1
    rows = {
        "index": str(version_dir),
        "version": manifest.version,
        "created": manifest.created_at.isoformat(timespec="seconds"),
        "embedding model": f"{manifest.embedding_model} ({manifest.dimension} dims)",
        "index kind": manifest.index_kind,
        "documents": f"{manifest.document_count} ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})",
        "visibility": ", ".join(f"{v} {k}" for k, v in sorted(visibility.items())),
        "chunks": str(manifest.chunk_count),
        "size on disk": f"{size / 1e6:.1f} MB",
        "chunking": ", ".join(f"{k}={v}" for k, v in manifest.chunking.items()),
    }
    for key, value in rows.items():
        table.add_row(f"[bold]{key}[/bold]", value)
    console.print(table, highlight=False)


@kb_app.command("eval")
def evaluate(
    ctx: typer.Context,
    questions: Annotated[
        Path, typer.Option(help="JSONL of {question, document_id}; document_id null = out of scope.")
    ] = EVAL_QUESTIONS,
    calibrate: Annotated[bool, typer.Option(help=f"Refit confidence on these questions and write {CALIBRATION_FILE}.")] = False,
    show_misses: Annotated[bool, typer.Option(help="List questions whose article is not in the top 5.")] = False,
) -> None:
    """Recall@1/@5/@10 and MRR on labelled questions (the sample help center's by default)."""
    from retrieval.evaluation import evaluate_retrieval, load_questions

    settings: KnowledgeBaseSettings = ctx.obj
    try:
        labelled = load_questions(questions)
        retriever = build_retriever(settings)
        report = evaluate_retrieval(retriever, labelled)
    except (OSError, ValueError, IndexFormatError) as exc:
        errors.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{report.in_scope} in-scope questions, {report.out_of_scope} out of scope")
    console.print(
        f"recall@1  {report.recall(1):.3f}\nrecall@5  {report.recall(5):.3f}\nrecall@10 {report.recall(10):.3f}\nMRR       {report.mrr:.3f}"
    )
    if report.out_of_scope:
        threshold = 0.5
        flagged = sum(c < threshold for c in report.out_of_scope_confidences)
        console.print(f"out of scope with confidence < {threshold}: {flagged}/{report.out_of_scope}")
    if show_misses:
        for question, expected, got in report.misses:
            console.print(f"  miss: {question!r} expected {expected}, got {got}", highlight=False)
    if calibrate:
        cosines, labels = zip(*report.calibration_points, strict=True)
        fitted = ConfidenceCalibrator.fit(list(cosines), list(labels))
        fitted.save(settings.index_root / CALIBRATION_FILE)
        console.print(
            f"calibration: slope {fitted.slope:.2f}, midpoint {fitted.midpoint:.3f} -> {settings.index_root / CALIBRATION_FILE}"
        )
