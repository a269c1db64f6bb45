"""``echoctl plan``, ``echoctl dev up`` and ``echoctl testbed up | clean``: run on this machine.

None of them goes through an API: ``plan`` runs the scheduler offline, ``dev up`` and
``testbed up`` start the platform here (their heavy modules are imported only when run).
"""

from __future__ import annotations

import typer

from .client import CliError
from .plan import Strategy as PlanStrategy
from .plumbing import Output, cli_errors, print_json
from .render import print_error, stdout

dev_app = typer.Typer(help="Run ECHO on this machine for development.", no_args_is_help=True)
testbed_app = typer.Typer(
    help="An emulated edge/fog/cloud fleet on this machine (root: network namespaces).",
    no_args_is_help=True,
)


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
