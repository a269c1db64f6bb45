"""``echoctl console`` and ``echoctl tokens create | list | revoke``: access to the platform.

``console`` opens the web console with a one-time login URL for the caller's token;
``tokens`` manages the API tokens themselves (admin).
"""

from __future__ import annotations

import sys
from enum import StrEnum

import typer
from rich.markup import escape

from .plumbing import Output, OutputOpt, cli_errors, client_of, show
from .render import stderr, stdout, token_created, tokens_table

tokens_app = typer.Typer(help="API tokens (admin): create, list, revoke.", no_args_is_help=True)


@cli_errors
def console(
    ctx: typer.Context,
    dataflow: str | None = typer.Option(
        None, "--dataflow", metavar="ID", help="Land on this dataflow's page."
    ),
    url_only: bool = typer.Option(False, "--url", help="Only print the login URL (do not open a browser)."),
) -> None:
    """Open the web console: a one-time login URL (valid 60 s, used once) for your token's role."""
    with client_of(ctx) as client:
        got = client.console_code(dataflow).json()
        url = client.base_url + got["path"]
    sys.stdout.write(url + "\n")  # as is, one line: scripts and terminals take it whole
    sys.stdout.flush()
    if not url_only:
        import webbrowser

        opened = False
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if not opened:
            stderr().print(f"no browser to open here: open the URL above within {got['expires_in']:.0f} s")


# ---------------------------------------------------------------------------- tokens


class TokenRole(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


@tokens_app.command("create")
@cli_errors
def tokens_create(
    ctx: typer.Context,
    role: TokenRole = typer.Option(..., "--role", help="viewer, operator or admin."),
    ttl: str | None = typer.Option(None, "--ttl", help="Lifetime: 90s, 15m, 24h, 7d (default: no expiry)."),
    name: str | None = typer.Option(None, "--name", help="A note: who or what the token is for."),
    output: Output = OutputOpt,
) -> None:
    """Create an API token; its secret is shown once."""
    with client_of(ctx) as client:
        resp = client.create_token(role.value, ttl, name)
    show(resp, output, token_created)


@tokens_app.command("list")
@cli_errors
def tokens_list(ctx: typer.Context, output: Output = OutputOpt) -> None:
    """List API tokens (no secrets)."""
    with client_of(ctx) as client:
        show(client.list_tokens(), output, tokens_table, "no tokens")


@tokens_app.command("revoke")
@cli_errors
def tokens_revoke(
    ctx: typer.Context, token_id: str = typer.Argument(..., metavar="ID", help="Token id (not the secret).")
) -> None:
    """Revoke an API token: refused everywhere within a second."""
    with client_of(ctx) as client:
        resp = client.revoke_token(token_id)
    body = resp.json()
    stdout().print(
        f"token [bold]{escape(str(body.get('id', token_id)))}[/] ({escape(str(body.get('role')))}) revoked"
    )
