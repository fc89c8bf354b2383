"""CLI: `skillstore serve` runs the HTTP API; `skillstore api-token new|hash` makes its tokens."""

from __future__ import annotations

import sys

import typer

TOKEN = typer.Typer(help="Make bearer tokens for the HTTP API (only their hashes go in settings).",
                    no_args_is_help=True)


def serve(host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
          port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
          log_level: str = typer.Option("info", "--log-level", help="uvicorn log level.")) -> None:
    """Serve the HTTP API (docs/api.md) and the web console at /ui (docs/ui.md) on this
    workspace until interrupted."""
    import uvicorn

    from ..server import create_app
    from ..settings import get_settings

    settings = get_settings()
    if not settings.api_token_hashes:
        typer.echo("warning: no API tokens configured (SKILLSTORE_API_TOKEN_HASHES); every "
                   "write will be refused. Make one with `skillstore api-token new`.", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


@TOKEN.command("new")
def token_new() -> None:
    """Print a new random token and the sha256 digest to add to SKILLSTORE_API_TOKEN_HASHES."""
    from ..api.auth import hash_token, new_token

    token = new_token()
    typer.echo(f"token:  {token}\nsha256: {hash_token(token)}")
    typer.echo("Give the token to the client; put only the sha256 digest in "
               "SKILLSTORE_API_TOKEN_HASHES (comma-separated).", err=True)


@TOKEN.command("hash")
def token_hash() -> None:
    """Read a token on stdin and print its sha256 digest (for SKILLSTORE_API_TOKEN_HASHES)."""
    from ..api.auth import hash_token
    from ..errors import ConfigError

    token = sys.stdin.readline().strip()
    if not token:
        raise ConfigError("No token on stdin; pipe one in, e.g. `printf %s \"$TOKEN\" | "
                          "skillstore api-token hash`.")
    typer.echo(hash_token(token))


def register(app: typer.Typer) -> None:
    """Attach `serve` and the `api-token` group to the root app."""
    app.command("serve")(serve)
    app.add_typer(TOKEN, name="api-token")
