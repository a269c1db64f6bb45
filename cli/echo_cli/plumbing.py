"""What every ``echoctl`` command shares: its API client, error handling and output.

``cli_errors`` turns a command's failure into one red line and exit code 1; ``client_of``
builds the API client from the root options (``--api-url``, ``--token``, ...); ``show``
prints an API response as a table or, with ``-o json``, as the API's JSON as is.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

import httpx
import typer
from rich.console import RenderableType

from .client import DEFAULT_API_URL, CliError, EchoClient
from .render import print_error, stdout

P = ParamSpec("P")
R = TypeVar("R")


class Output(StrEnum):
    table = "table"
    json = "json"


def make_client(api_url: str, token: str | None = None, ca_file: str | None = None) -> EchoClient:
    """Build the API client (tests replace this to fake the HTTP layer)."""
    return EchoClient(api_url, token=token, ca_file=ca_file)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn every failure of a command into a one-line message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except CliError as e:
            print_error(e)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stdout().print("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:
            if os.environ.get("ECHO_DEBUG"):
                raise
            print_error(f"unexpected {type(e).__name__}: {e} (set ECHO_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper


def token_of(obj: dict[str, Any]) -> str | None:
    """``--token`` / ``ECHO_TOKEN``, else the content of ``--token-file`` / ``ECHO_TOKEN_FILE``."""
    if obj.get("token"):
        return str(obj["token"])
    if not obj.get("token_file"):
        return None
    from pathlib import Path

    from echo_shared.secretfiles import SecretFileError, read_secret

    try:
        return read_secret(Path(obj["token_file"])) or None
    except SecretFileError as e:
        raise CliError(f"cannot read the API token: {e}") from e


def client_of(ctx: typer.Context) -> EchoClient:
    """The API client of the root options; built by the root's ``make_client`` (``echo_cli.main``)."""
    obj = ctx.find_root().obj or {}
    build = obj.get("make_client") or make_client
    return build(obj.get("api_url") or DEFAULT_API_URL, token_of(obj), obj.get("ca_file"))


def print_json(text: str) -> None:
    """The API's JSON exactly as received (no re-formatting), for scripts."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


OutputOpt = typer.Option(Output.table, "--output", "-o", help="table, or json (the API's JSON as is).")


def show(
    resp: httpx.Response, output: Output, render: Callable[[Any], RenderableType], empty: str = ""
) -> None:
    """Print an API response: as is for ``-o json``, else rendered (or ``empty`` for [])."""
    if output is Output.json:
        print_json(resp.text)
        return
    body = resp.json()
    if empty and not body:
        stdout().print(empty)
        return
    stdout().print(render(body))
