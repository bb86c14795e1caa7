"""The `supportbot` command: nouns then verbs (`supportbot kb ingest`, ...)."""

from __future__ import annotations

import logging
from typing import Annotated

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


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
) -> None:
    """Run the server; on first start it indexes the sample help center."""
    import uvicorn

    from server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(ctx.obj), host=host, port=port, log_level="info")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
