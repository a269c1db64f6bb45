"""``echoctl``: the command line of ECHO (typer + rich, REST over httpx).

The API is found from ``--api-url``, else ``ECHO_API_URL`` (``source .echo/dev.env``
after ``echoctl dev up``), else http://127.0.0.1:8099. The API token comes from
``--token`` or ``ECHO_TOKEN``, else the 0600 file ``--token-file`` / ``ECHO_TOKEN_FILE``;
an HTTPS API's certificate is verified against ``--ca-file`` / ``ECHO_CA_FILE`` (else the
system's CAs). Errors are one red line (plus the located problems of an invalid spec) and
exit code 1, never a traceback.
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
from rich.markup import escape

from .client import DEFAULT_API_URL, CliError, EchoClient
from .plan import Strategy as PlanStrategy
from .render import (
    audit_table,
    dataflow_detail,
    dataflows_table,
    describe_dataflow,
    device_detail,
    devices_table,
    events_table,
    print_error,
    stderr,
    stdout,
    token_created,
    tokens_table,
)
from .watching import SUCCESS, print_outcome, submit_file, watch_dataflow

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="echoctl",
    help="Run and inspect ECHO dataflows across edge, fog and cloud devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
get_app = typer.Typer(help="Show dataflows and devices.", no_args_is_help=True)
dev_app = typer.Typer(help="Run ECHO on this machine for development.", no_args_is_help=True)
app.add_typer(get_app, name="get")
app.add_typer(dev_app, name="dev")
testbed_app = typer.Typer(
    help="An emulated edge/fog/cloud fleet on this machine (root: network namespaces).",
    no_args_is_help=True,
)
app.add_typer(testbed_app, name="testbed")
tokens_app = typer.Typer(help="API tokens (admin): create, list, revoke.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


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
    obj = ctx.find_root().obj or {}
    return make_client(obj.get("api_url") or DEFAULT_API_URL, token_of(obj), obj.get("ca_file"))


def print_json(text: str) -> None:
    """The API's JSON exactly as received (no re-formatting), for scripts."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- root


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


# ---------------------------------------------------------------------------- dataflows


@app.command()
@cli_errors
def submit(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="Spec file (.yaml/.yml is YAML, else JSON); '-' is YAML on stdin."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow the tasks live until it settles."),
) -> None:
    """Submit a dataflow spec."""
    with client_of(ctx) as client:
        df_id, state, _ = submit_file(client, file)
        out = stdout()
        out.print(f"dataflow [bold]{escape(df_id)}[/] submitted ({escape(state)})")
        if not watch:
            return
        try:
            df = watch_dataflow(client, df_id, console=out)
        except KeyboardInterrupt:
            out.print(f"stopped watching; dataflow {escape(df_id)} carries on (echoctl stop {escape(df_id)})")
            raise typer.Exit(130) from None
        print_outcome(df, out)
        if df.get("state") not in SUCCESS:
            raise typer.Exit(1)


@app.command()
@cli_errors
def stop(
    ctx: typer.Context, dataflow_id: str = typer.Argument(..., metavar="ID", help="Dataflow id.")
) -> None:
    """Stop a dataflow (every task on every device)."""
    with client_of(ctx) as client:
        resp = client.stop_dataflow(dataflow_id)
    df: dict[str, Any] = resp.json()
    print_outcome(df)
    if resp.status_code == 202:
        stdout().print(f"still stopping; follow it with `echoctl get dataflow {escape(dataflow_id)}`")


# ---------------------------------------------------------------------------- get

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


@get_app.command("dataflows")
@cli_errors
def get_dataflows(ctx: typer.Context, output: Output = OutputOpt) -> None:
    """List dataflows."""
    with client_of(ctx) as client:
        show(client.list_dataflows(), output, dataflows_table, "no dataflows")


@get_app.command("dataflow")
@cli_errors
def get_dataflow(
    ctx: typer.Context,
    dataflow_id: str = typer.Argument(..., metavar="ID", help="Dataflow id."),
    output: Output = OutputOpt,
) -> None:
    """Show one dataflow: its tasks (device, state, placement reason) and edges."""
    with client_of(ctx) as client:
        show(client.get_dataflow(dataflow_id), output, dataflow_detail)


@get_app.command("devices")
@cli_errors
def get_devices(ctx: typer.Context, output: Output = OutputOpt) -> None:
    """List devices with their status and utilisation."""
    with client_of(ctx) as client:
        show(client.list_devices(), output, devices_table, "no devices")


@get_app.command("device")
@cli_errors
def get_device(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., metavar="ID", help="Device id."),
    output: Output = OutputOpt,
) -> None:
    """Show one device."""
    with client_of(ctx) as client:
        show(client.get_device(device_id), output, device_detail)


@get_app.command("migrations")
@cli_errors
def get_migrations(
    ctx: typer.Context,
    dataflow: str | None = typer.Option(None, "--dataflow", help="Only this dataflow's."),
    output: Output = OutputOpt,
) -> None:
    """List the latest migrations (newest first)."""
    from .migrations import migrations_table

    with client_of(ctx) as client:
        show(client.list_migrations(dataflow), output, migrations_table, "no migrations")


@get_app.command("migration")
@cli_errors
def get_migration(
    ctx: typer.Context,
    migration_id: str = typer.Argument(..., metavar="MID", help="Migration id."),
    output: Output = OutputOpt,
) -> None:
    """Show one migration: its state and each step with its timing."""
    from .migrations import migration_detail

    with client_of(ctx) as client:
        show(client.get_migration(migration_id), output, migration_detail)


@get_app.command("decisions")
@cli_errors
def get_decisions(ctx: typer.Context, output: Output = OutputOpt) -> None:
    """What the adaptive rebalancer decided about overloaded devices, and why."""
    from .migrations import decisions_table

    with client_of(ctx) as client:
        show(client.decisions(), output, decisions_table, "no decisions")


@get_app.command("events")
@cli_errors
def get_events(
    ctx: typer.Context,
    dataflow: str | None = typer.Option(None, "--dataflow", help="Only this dataflow's."),
    device: str | None = typer.Option(None, "--device", help="Only those about this device."),
    since: str | None = typer.Option(
        None, "--since", help="A time (ISO 8601, Unix) or an age: 90s, 10m, 2h."
    ),
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=1000, help="At most this many (the newest)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Then follow new events until Ctrl-C."),
    output: Output = OutputOpt,
) -> None:
    """What happened (oldest first): scheduled, deployed, task started/failed, migrated,
    failed over, rebalanced, devices lost and back... With -w, follows live."""
    from .events import follow_events

    with client_of(ctx) as client:
        if not watch:
            show(
                client.events(dataflow=dataflow, device=device, since=since, limit=limit),
                output,
                events_table,
                "no events",
            )
            return
        try:
            follow_events(
                client,
                dataflow=dataflow,
                device=device,
                since=since,
                limit=limit,
                json_lines=output is Output.json,
            )
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


@app.command()
@cli_errors
def describe(
    ctx: typer.Context,
    kind: str = typer.Argument(..., metavar="dataflow", help="What to describe: dataflow."),
    ident: str = typer.Argument(..., metavar="ID", help="Its id."),
    events: int = typer.Option(20, "--events", min=0, max=1000, help="How many recent events to show."),
) -> None:
    """Describe a dataflow (kubectl-style): spec in short, placement and tasks, edges, recent events."""
    if kind not in ("dataflow", "df"):
        raise CliError(f"cannot describe {kind!r}: only 'dataflow' (e.g. echoctl describe dataflow df-…)")
    with client_of(ctx) as client:
        df = client.get_dataflow(ident).json()
        recent = client.events(dataflow=ident, limit=events).json() if events else []
    stdout().print(describe_dataflow(df, recent))


@app.command()
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


@get_app.command("audit")
@cli_errors
def get_audit(
    ctx: typer.Context,
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=10_000, help="At most this many entries."),
    since: str | None = typer.Option(None, "--since", help="Only entries at or after this ISO 8601 time."),
    output: Output = OutputOpt,
) -> None:
    """The audit trail (admin): mutating calls and device events, newest first."""
    with client_of(ctx) as client:
        show(client.audit(limit, since), output, audit_table, "no audit entries")


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


# ---------------------------------------------------------------------------- migrations


@app.command()
@cli_errors
def migrate(
    ctx: typer.Context,
    dataflow_id: str = typer.Argument(..., metavar="ID", help="Dataflow id."),
    task: str = typer.Argument(..., help="Task id."),
    device: str | None = typer.Option(
        None, "--device", "-d", help="Target device (default: the scheduler's)."
    ),
    wait: bool = typer.Option(False, "--wait", "-w", help="Wait until the migration ended, and show it."),
    timeout: float = typer.Option(60.0, help="Seconds to wait at most with --wait."),
    output: Output = OutputOpt,
) -> None:
    """Move a running task, with its state, to another device."""
    import json as _json

    from .migrations import migration_detail, wait_for

    with client_of(ctx) as client:
        mid = client.migrate(dataflow_id, task, device).json()["migration"]
        if not wait:
            if output is Output.json:
                print_json(_json.dumps({"migration": mid}))
            else:
                stdout().print(f"migration {escape(mid)} started; `echoctl get migration {escape(mid)}`")
            return
        m = wait_for(client, mid, timeout)
    if output is Output.json:
        print_json(_json.dumps(m))
    else:
        stdout().print(migration_detail(m))
    if m["state"] != "completed":
        raise typer.Exit(1)


@app.command()
@cli_errors
def rebalance(
    ctx: typer.Context,
    dataflow_id: str = typer.Argument(..., metavar="ID", help="Dataflow id."),
    output: Output = OutputOpt,
) -> None:
    """Place a dataflow again and migrate the tasks whose device changes."""
    with client_of(ctx) as client:
        resp = client.rebalance(dataflow_id)
    if output is Output.json:
        print_json(resp.text)
        return
    body = resp.json()
    if not body["moves"]:
        stdout().print("every task stays where it is")
    for (task, dev), mid in zip(body["moves"].items(), body["migrations"], strict=False):
        stdout().print(f"{escape(task)} -> {escape(dev)}: migration {escape(mid)}")


# ---------------------------------------------------------------------------- plan


@app.command()
def plan(
    spec: str = typer.Argument(..., help="Dataflow spec (YAML or JSON)."),
    devices: str = typer.Option(
        ..., "--devices", "-d", help="Device records (a YAML/JSON list in the registration format)."
    ),
    strategy: PlanStrategy | None = typer.Option(None, "--strategy", "-s", help="Override the spec's."),
    output: Output = typer.Option(Output.table, "--output", "-o", help="table, or json (the placement)."),
) -> None:
    """Show where the scheduler would place a dataflow, and why (offline: no brokers)."""
    from .plan import PlanFailed, parse, plan_view, run_plan

    try:
        text = run_plan(spec, devices, strategy)
        if output is Output.json:
            print_json(text)
        else:
            stdout().print(plan_view(parse(text)))
    except PlanFailed as e:
        print_error(e)
        raise typer.Exit(e.code) from None
    except CliError as e:
        print_error(e)
        raise typer.Exit(1) from None


# ---------------------------------------------------------------------------- dev


@dev_app.command("up")
@cli_errors
def dev_up(
    api_port: int = typer.Option(8099, "--api-port", help="Port of the REST API (a free one if it is busy)."),
    submit_files: list[str] = typer.Option(
        [], "--submit", help="Spec file to submit once the platform is up (repeatable); '-' is stdin."
    ),
    ha: bool = typer.Option(
        False,
        "--ha",
        help="NATS as a 3-node cluster (JetStream replicated 3 times); Redis as a primary, a replica "
        "and 3 sentinels.",
    ),
    replicas: int = typer.Option(
        1,
        "--replicas",
        min=1,
        max=5,
        help="Replicas of each service (master, registry, migrator, scheduler): every master replica "
        "serves the API on a port of its own; one replica of each leads.",
    ),
) -> None:
    """Start brokers, services and a fleet of agents here; stop them all with Ctrl-C."""
    from .devup import dev_up as run  # keeps the devstack out of the other commands' start-up

    code = run(api_port=api_port, submit=submit_files, replicas=replicas, ha=ha)
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------------------- testbed


@testbed_app.command("up")
@cli_errors
def testbed_up(
    api_port: int = typer.Option(8099, "--api-port", help="Port of the REST API (a free one if it is busy)."),
    fleet: str | None = typer.Option(
        None, "--fleet", help="YAML file of devices and their network paths (default: the built-in fleet)."
    ),
    submit_files: list[str] = typer.Option(
        [], "--submit", help="Spec file to submit once the testbed is up (repeatable); '-' is stdin."
    ),
) -> None:
    """Start brokers, services and agents behind emulated latency/bandwidth; Ctrl-C stops and cleans up."""
    from .testbed.up import testbed_up as run

    code = run(api_port=api_port, submit=submit_files, fleet_file=fleet)
    if code:
        raise typer.Exit(code)


@testbed_app.command("clean")
@cli_errors
def testbed_clean() -> None:
    """Remove namespaces, veth pairs and bridges left by testbeds that were killed."""
    from .testbed.up import testbed_clean as run

    swept = run()
    stdout().print(f"removed testbeds: {', '.join(swept)}" if swept else "nothing to remove")


# ---------------------------------------------------------------------------- security

from .security_cli import register as _register_security  # noqa: E402  (needs the plumbing above)

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
