"""The `supportbot` command: nouns then verbs (`supportbot kb ingest`, ...)."""

from __future__ import annotations

import typer

from knowledge_base.cli import kb_app
from server.settings import Settings

app = typer.Typer(help="Supportbot: a self-hosted customer-support assistant.", no_args_is_help=True, add_completion=False)
app.add_typer(kb_app, name="kb")


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Settings come from SUPPORTBOT_* environment variables or a .env file."""
    try:
        ctx.obj = Settings()
    except ValueError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()
