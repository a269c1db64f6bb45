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

from echo_shared.bundle import create_bundle
from echo_shared.pki import DEFAULT_HOSTS, PkiError

from .client import CliError, EchoClient
from .render import stdout

pki_app = typer.Typer(help="The private CA and credentials of a deployment.", no_args_is_help=True)
devices_app = typer.Typer(help="Device identities: enrol, revoke, rotate (admin).", no_args_is_help=True)


def _owner(spec: str | None, what: str) -> tuple[int, int] | None:
    if spec is None:
        return None
    uid, _, gid = spec.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError as e:
        raise CliError(f"--{what}-owner expects UID[:GID], got {spec!r}") from e


def pki_init(
    directory: Path, hosts: list[str], owners: dict[str, tuple[int, int]] | None = None
) -> list[tuple[str, Path]]:
    try:
        b = create_bundle(directory, tuple(dict.fromkeys([*DEFAULT_HOSTS, *hosts])), owners=owners)
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
        mosquitto_owner: str | None = typer.Option(
            None, help="UID[:GID] Mosquitto runs as, if not this account (containers: 1883)."
        ),
        redis_owner: str | None = typer.Option(
            None, help="UID[:GID] Redis runs as, if not this account (containers: 999)."
        ),
    ) -> None:
        """Create the CA, server certificate and credentials (keeps what exists)."""
        owners = {
            k: v
            for k, v in (
                ("mosquitto", _owner(mosquitto_owner, "mosquitto")),
                ("redis", _owner(redis_owner, "redis")),
            )
            if v is not None
        }
        out = stdout()
        for what, path in pki_init(directory, host, owners):
            out.print(f"  {what:<38} {escape(str(path))}")
        out.print("private files are mode 0600; see docs/security.md to bring your own CA")

    @devices_app.command("enrol")
    @cli_errors
    def enrol(
        ctx: typer.Context,
        device: str = typer.Argument(..., metavar="ID", help="The new device's id."),
        tier: str = typer.Option(..., "--tier", help="edge, fog or cloud."),
        ttl: str = typer.Option("15m", "--ttl", help="How long the token can be used (90s, 15m, 24h)."),
        output: Any = output_option,
    ) -> None:
        """A one-time enrolment token for a new device (shown once)."""
        with client_of(ctx) as client:
            resp = client.request(
                "POST", "/api/v1/enrolments", json={"device": device, "tier": tier, "ttl": ttl}, ok=(201,)
            )
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
