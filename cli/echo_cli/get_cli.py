"""``echoctl get ...``: show dataflows, devices, migrations, decisions, events, the audit trail.

Each command prints a table, or with ``-o json`` the API's JSON as is.
"""

from __future__ import annotations

import typer

from .plumbing import Output, OutputOpt, cli_errors, client_of, show
from .render import audit_table, dataflow_detail, dataflows_table, device_detail, devices_table, events_table

get_app = typer.Typer(help="Show dataflows and devices.", no_args_is_help=True)


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
