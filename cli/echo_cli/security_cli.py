"""``echoctl pki init`` and ``echoctl devices enrol | revoke | rotate``.

``pki init`` runs offline: it writes the security bundle (``echo_shared.bundle``: CA,
server certificate, service credentials, broker auth files, the first admin token).
The ``devices`` commands are REST calls (admin token in ``ECHO_TOKEN``).

Registered by ``main`` (``register(app)``), which owns the shared CLI plumbing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape

from .client import CliError, EchoClient
from .render import stdout

pki_app = typer.Typer(help="The private CA and credentials of a deployment.", no_args_is_help=True)
devices_app = typer.Typer(help="Device identities: enrol, revoke, rotate (admin).", no_args_is_help=True)


OWNABLE = ("mosquitto", "redis", "master", "registry", "scheduler", "migrator", "prometheus", "grafana")


def parse_owners(specs: list[str]) -> dict[str, tuple[int, int]]:
    """``NAME=UID[:GID]`` items: who runs each broker or service (when not this account)."""
    out: dict[str, tuple[int, int]] = {}
    for spec in specs:
        name, sep, ids = spec.partition("=")
        uid, _, gid = ids.partition(":")
        if not sep or name not in OWNABLE or not uid.isdigit() or (gid and not gid.isdigit()):
            raise CliError(
                f"--owner expects NAME=UID[:GID] with NAME one of {', '.join(OWNABLE)}; got {spec!r}"
            )
        out[name] = (int(uid), int(gid or uid))
    return out


def pki_init(
    directory: Path, hosts: list[str], owners: dict[str, tuple[int, int]] | None = None, ha: bool = False
) -> list[tuple[str, Path]]:
    # imported here: the cryptography stack is heavy, and every other echoctl command skips it
    from echo_shared.bundle import create_bundle
    from echo_shared.pki import DEFAULT_HOSTS, PkiError

    try:
        b = create_bundle(directory, tuple(dict.fromkeys([*DEFAULT_HOSTS, *hosts])), owners=owners, ha=ha)
    except (PkiError, OSError) as e:
        raise CliError(f"cannot create the security bundle in {directory}: {e}") from e
    return [
        ("CA certificate (give it to clients)", b.ca_file),
        ("CA key (keep it offline if you can)", b.ca.key),
        ("server certificate and key", b.server.cert),
        ("service credentials", b.root / "identities"),
        ("first admin token", b.admin_token_file),
        ("Mosquitto dynamic security", b.dynsec_file),
        ("NATS users", b.nats_auth_file),
        ("Redis ACL users", b.redis_acl_file),
        ("Prometheus: scrape certificate, HTTPS and its login", b.prometheus_dir),
        *([("NATS cluster nodes (compose's ha profile)", b.root / "nats")] if ha else []),
        *([("Redis replication and Sentinel (ha profile)", b.root / "redis")] if ha else []),
    ]


def register(
    app: typer.Typer,
    *,
    cli_errors: Callable[[Callable[..., Any]], Callable[..., Any]],
    client_of: Callable[[typer.Context], EchoClient],
    print_json: Callable[[str], None],
    output_option: Any,
    output_json: Any,
) -> None:
    """Add ``pki`` and ``devices`` to the ``echoctl`` app (its error handling and client)."""

    @pki_app.command("init")
    @cli_errors
    def init(
        directory: Path = typer.Option(Path(".echo/pki"), "--dir", help="Where the bundle goes (kept 0700)."),
        host: list[str] = typer.Option(
            [], "--host", help="A name or address clients dial the brokers and API by (repeatable)."
        ),
        owner: list[str] = typer.Option(
            [],
            "--owner",
            help="NAME=UID[:GID]: the account a broker (mosquitto, redis) or service (master, "
            "registry, scheduler, migrator) runs as, if not this one: it gets its own files (repeatable).",
        ),
        ha: bool = typer.Option(
            False,
            "--ha",
            help="Also configure compose's ha profile: a 3-node NATS cluster (nats, nats-2, nats-3) and "
            "Redis with Sentinel (redis, redis-replica, sentinel-1..3).",
        ),
    ) -> None:
        """Create the CA, server certificate and credentials (keeps what exists)."""
        out = stdout()
        for what, path in pki_init(directory, host, parse_owners(owner), ha=ha):
            out.print(f"  {what:<38} {escape(str(path))}")
        out.print("private files are mode 0600; see docs/security.md to bring your own CA")

    @devices_app.command("enrol")
    @cli_errors
    def enrol(
        ctx: typer.Context,
        device: str = typer.Argument(..., metavar="ID", help="The new device's id."),
        tier: str = typer.Option(..., "--tier", help="edge, fog or cloud."),
        ttl: str = typer.Option("15m", "--ttl", help="How long the token can be used (90s, 15m, 24h)."),
        token_file: Path | None = typer.Option(
            None, "--token-file", help="Write the token to this file (mode 0600) instead of showing it."
        ),
        owner: str | None = typer.Option(
            None, "--token-file-owner", help="UID[:GID] that gets the token file."
        ),
        output: Any = output_option,
    ) -> None:
        """A one-time enrolment token for a new device (shown once)."""
        with client_of(ctx) as client:
            resp = client.request(
                "POST", "/api/v1/enrolments", json={"device": device, "tier": tier, "ttl": ttl}, ok=(201,)
            )
        if token_file is not None:  # for the device's --enrol-token-file
            from echo_shared.secretfiles import write_secret

            who = parse_owners([f"master={owner}"])["master"] if owner else None
            write_secret(token_file, resp.json()["token"], owner=who)
            stdout().print(f"enrolment token for {escape(device)} written to {escape(str(token_file))}")
            return
        if output == output_json:
            print_json(resp.text)
            return
        body = resp.json()
        out = stdout()
        out.print(
            f"enrolment token for [bold]{escape(device)}[/] ({escape(tier)}), valid until {body['expires']}:"
        )
        out.print(body["token"], soft_wrap=True, highlight=False)
        out.print("[yellow]it is shown once; on the device run:[/]")
        out.print(
            f"  ECHO_API_URL=... echo-agent --device-id {escape(device)} --tier {escape(tier)} "
            "--enrol-token TOKEN --state-dir /var/lib/echo",
            soft_wrap=True,
        )

    @devices_app.command("revoke")
    @cli_errors
    def revoke(ctx: typer.Context, device: str = typer.Argument(..., metavar="ID")) -> None:
        """Revoke a device: the broker drops it, its credentials stop working, its tasks fail over."""
        with client_of(ctx) as client:
            resp = client.request(
                "POST", f"/api/v1/devices/{quote(device, safe='')}/revoke", not_found=("device", device)
            )
        stdout().print(f"device [bold]{escape(device)}[/] is {escape(resp.json()['status'])}")

    @devices_app.command("rotate")
    @cli_errors
    def rotate(
        ctx: typer.Context, device: str = typer.Argument(..., metavar="ID"), output: Any = output_option
    ) -> None:
        """Give a connected device new credentials; the old ones stop after a grace period."""
        with client_of(ctx) as client:
            resp = client.request(
                "POST", f"/api/v1/devices/{quote(device, safe='')}/rotate", not_found=("device", device)
            )
        if output == output_json:
            print_json(resp.text)
            return
        body = resp.json()
        retire = body["old_retire_at"]
        stdout().print(f"device [bold]{escape(device)}[/] has new credentials; the old ones stop at {retire}")

    app.add_typer(pki_app, name="pki")
    app.add_typer(devices_app, name="devices")


__all__ = ["devices_app", "pki_app", "pki_init", "register"]
