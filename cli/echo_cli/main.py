"""``echoctl``: the command line of ECHO (typer + rich, REST over httpx).

The API is found from ``--api-url``, else ``ECHO_API_URL`` (``source .echo/dev.env``
after ``echoctl dev up``), else http://127.0.0.1:8099. The API token comes from
``--token`` or ``ECHO_TOKEN``, else the 0600 file ``--token-file`` / ``ECHO_TOKEN_FILE``;
an HTTPS API's certificate is verified against ``--ca-file`` / ``ECHO_CA_FILE`` (else the
system's CAs). Errors are one red line (plus the located problems of an invalid spec) and
exit code 1, never a traceback.

This module builds the app from the commands of ``dataflows_cli`` (submit, stop, describe,
migrate, rebalance), ``get_cli`` (get), ``access_cli`` (console, tokens), ``local_cli``
(plan, dev, testbed) and ``security_cli`` (pki, devices); ``plumbing`` is what they share.
"""

from __future__ import annotations

import typer

from .access_cli import console, tokens_app
from .client import DEFAULT_API_URL
from .dataflows_cli import describe, migrate, rebalance, stop, submit
from .get_cli import get_app
from .local_cli import dev_app, plan, testbed_app
from .plumbing import Output, OutputOpt, cli_errors, client_of, make_client, print_json
from .security_cli import register as _register_security

app = typer.Typer(
    name="echoctl",
    help="Run and inspect ECHO dataflows across edge, fog and cloud devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    api_url: str = typer.Option(
        DEFAULT_API_URL, "--api-url", envvar="ECHO_API_URL", show_envvar=True, help="Base URL of the API."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="ECHO_TOKEN",
        show_envvar=True,
        show_default=False,
        help="API token (sent as Authorization: Bearer); prefer the environment variable.",
    ),
    token_file: str | None = typer.Option(
        None,
        "--token-file",
        envvar="ECHO_TOKEN_FILE",
        show_envvar=True,
        help="A file (mode 0600) holding the API token, when no --token / ECHO_TOKEN is given.",
    ),
    ca_file: str | None = typer.Option(
        None,
        "--ca-file",
        envvar="ECHO_CA_FILE",
        show_envvar=True,
        help="CA certificate (PEM) to verify an HTTPS API with.",
    ),
) -> None:
    ctx.obj = {"api_url": api_url, "token": token, "token_file": token_file, "ca_file": ca_file}
    # looked up here, when a command runs, so that tests can replace ``main.make_client``
    ctx.obj["make_client"] = make_client


# Commands and groups are listed in ``--help`` in the order they are added here.
app.command()(submit)
app.command()(stop)
app.command()(describe)
app.command()(console)
app.command()(migrate)
app.command()(rebalance)
app.command()(plan)
app.add_typer(get_app, name="get")
app.add_typer(dev_app, name="dev")
app.add_typer(testbed_app, name="testbed")
app.add_typer(tokens_app, name="tokens")
_register_security(
    app,
    cli_errors=cli_errors,
    client_of=client_of,
    print_json=print_json,
    output_option=OutputOpt,
    output_json=Output.json,
)


if __name__ == "__main__":
    app()
