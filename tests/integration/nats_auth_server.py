"""A nats-server of our own for the auth callout tests, and a toy device directory.

Each test starts its own server (free port, own directory) with the config that
``render_auth_config`` writes: static users (a callout user, a service, an admin, a wildcard
tester) in the account ``ECHO`` and every other login sent to ``AuthCallout``. The fixtures
``server``, ``devices`` and ``callout`` are in this directory's conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from echo_cli.devstack.brokers import nats_server_binary
from echo_cli.devstack.processes import ManagedProcess, free_port, port_open
from echo_shared import pki
from echo_shared.natsauth import (
    CalloutConfig,
    ClientInfo,
    NatsPermissions,
    StaticUser,
    callout_permissions,
    hash_password,
    render_auth_config,
    request_permissions,
    responder_permissions,
)
from echo_shared.natsjwt import NkeyPair

AUTH_TIMEOUT = 1.0  # the server's wait for the callout (and so a login's wait when it is down)
DEVICE_INBOX = "_INBOX_dev1"


# ------------------------------------------------------------------ a server of our own


@dataclass
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def make_tls(directory: Path) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost (``echo_shared.pki``)."""
    ca = pki.create_ca(directory, name="ECHO test CA")
    server = pki.issue_server(
        ca, pki.KeyPair(directory / "server.pem", directory / "server-key.pem"), ["localhost", "127.0.0.1"]
    )
    return Tls(ca.cert, server.cert, server.key)


@dataclass
class Login:
    user: str
    password: str = field(repr=False)


@dataclass
class Server:
    url: str
    issuer: NkeyPair
    logins: dict[str, Login]
    tls: Tls | None
    proc: ManagedProcess
    clients: list[NatsClient] = field(default_factory=list)

    def tls_options(self) -> dict[str, Any]:
        return {"tls": self.tls.client_context()} if self.tls is not None else {}

    async def connect(
        self,
        user: str,
        password: str,
        *,
        errors: list[str] | None = None,
        inbox: str = "_INBOX",
        **options: Any,
    ) -> NatsClient:
        """One connection, no reconnection: a refused login raises at once."""

        async def on_error(e: Exception) -> None:
            if errors is not None:
                errors.append(str(e).lower())

        nc = await nats.connect(
            self.url,
            user=user,
            password=password,
            error_cb=on_error,
            allow_reconnect=options.pop("allow_reconnect", False),
            connect_timeout=5,
            inbox_prefix=inbox,
            **self.tls_options(),
            **options,
        )
        self.clients.append(nc)
        return nc

    async def login(self, name: str, errors: list[str] | None = None, **options: Any) -> NatsClient:
        login = self.logins[name]
        return await self.connect(login.user, login.password, errors=errors, **options)


SERVICE_PERMS = request_permissions(["svc.out.>"]) | responder_permissions(["svc.rpc"])
ADMIN_PERMS = NatsPermissions(
    pub_allow=("$JS.API.>", "$KV.>", "$O.>", "$JS.ACK.>", "$JS.FC.>", "t1.>"), sub_allow=("_INBOX.>",)
)
TESTER_PERMS = NatsPermissions(pub_allow=(">",), sub_allow=(">",))


def write_config(directory: Path, tls: Tls | None) -> tuple[int, NkeyPair, dict[str, Login], Path]:
    """The server's config: our listener and JetStream store, then ``render_auth_config``."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = NkeyPair.generate()
    logins = {n: Login(n, secrets.token_urlsafe(12)) for n in ("callout", "svc", "admin", "tester", "legacy")}
    legacy_hash = hash_password(logins["legacy"].password, rounds=4).replace("$2b$", "$2a$", 1)
    users = [
        StaticUser("callout", hash_password(logins["callout"].password, rounds=4), callout_permissions()),
        StaticUser("svc", hash_password(logins["svc"].password, rounds=4), SERVICE_PERMS),
        StaticUser("admin", hash_password(logins["admin"].password, rounds=4), ADMIN_PERMS),
        StaticUser("tester", hash_password(logins["tester"].password, rounds=4), TESTER_PERMS),
        StaticUser("legacy", legacy_hash, SERVICE_PERMS),
    ]
    port = free_port()
    conf = [f"listen: 127.0.0.1:{port}", "server_name: echo-test"]
    conf.append(f"jetstream {{ store_dir: {json.dumps(str(directory / 'js'))} }}")
    if tls is not None:
        cert, key = json.dumps(str(tls.cert_file)), json.dumps(str(tls.key_file))
        conf.append(f"tls {{ cert_file: {cert}, key_file: {key} }}")
    conf.append(render_auth_config(users, CalloutConfig(issuer.public_key, "callout", timeout=AUTH_TIMEOUT)))
    path = directory / "nats.conf"
    path.write_text("\n".join(conf))
    return port, issuer, logins, path


async def wait_listening(proc: ManagedProcess, port: int) -> None:
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited: {proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} does not listen on {port}")
        await asyncio.sleep(0.02)


async def start_server(directory: Path, *, tls: Tls | None = None) -> Server:
    port, issuer, logins, path = write_config(directory, tls)
    proc = ManagedProcess("nats", [nats_server_binary(), "-c", str(path)], log_dir=directory)
    await wait_listening(proc, port)
    scheme = "tls" if tls is not None else "nats"
    return Server(f"{scheme}://127.0.0.1:{port}", issuer, logins, tls, proc)


async def stop_server(server: Server) -> None:
    for nc in server.clients:
        if not nc.is_closed:
            await nc.close()
    server.proc.stop()


# ------------------------------------------------------------------ the authorizer


class Devices:
    """A toy device directory: name -> (password, permissions); calls are recorded."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, NatsPermissions]] = {}
        self.calls: list[tuple[str, ClientInfo]] = []
        self.fail_with: Exception | None = None

    async def authorize(self, username: str, password: str, client: ClientInfo) -> NatsPermissions | None:
        self.calls.append((username, client))
        if self.fail_with is not None:
            raise self.fail_with
        entry = self.entries.get(username)
        if entry is None or not secrets.compare_digest(entry[0], password):
            return None
        return entry[1]


def violated(errors: list[str], kind: str, subject: str) -> bool:
    return any(f'permissions violation for {kind} to "{subject.lower()}"' in e for e in errors)


async def refused(connect: Callable[[], Awaitable[NatsClient]]) -> str:
    with pytest.raises(nats.errors.Error) as info:
        await connect()
    text = str(info.value).lower()
    assert "authorization violation" in text, text
    return text


async def roundtrip(sender: NatsClient, receiver: NatsClient, subject: str) -> bytes:
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def cb(m: Msg) -> None:
        got.put_nowait(m)

    sub = await receiver.subscribe(subject, cb=cb)
    await receiver.flush()
    payload = secrets.token_bytes(8)
    await sender.publish(subject, payload)
    await sender.flush()
    msg = await asyncio.wait_for(got.get(), 5)
    await sub.unsubscribe()
    assert msg.data == payload
    return msg.data
