"""``echoctl submit | stop | describe | migrate | rebalance``: acting on dataflows.

Plain functions, each one command of the root app (``main`` registers them by name).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from .client import CliError
from .plumbing import Output, OutputOpt, cli_errors, client_of, print_json
from .render import describe_dataflow, stdout
from .watching import SUCCESS, print_outcome, submit_file, watch_dataflow


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


# ---------------------------------------------------------------------------- migrations


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
