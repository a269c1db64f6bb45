"""NATS auth callout and least-privilege JetStream permissions, on a real nats-server.

Each test starts its own server (free port, own directory) with the config that
``render_auth_config`` writes: static users (a callout user, a service, an admin, a wildcard
tester) in the account ``ECHO`` and every other login sent to ``AuthCallout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, RetentionPolicy, StreamConfig

from echo_cli.devstack.brokers import nats_server_binary
from echo_cli.devstack.processes import ManagedProcess, free_port, port_open
from echo_shared import pki
from echo_shared.natsauth import (
    AuthCallout,
    CalloutConfig,
    ClientInfo,
    NatsPermissions,
    StaticUser,
    callout_permissions,
    hash_password,
    js_consumer_permissions,
    js_publish_permissions,
    js_stream_permissions,
    kv_permissions,
    object_store_permissions,
    render_auth_config,
    request_permissions,
    responder_permissions,
)
from echo_shared.natsjwt import PREFIX_SERVER, PREFIX_USER, NkeyPair, decode_jwt, encode_jwt
from tests.harness.waiting import eventually

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


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    s = await start_server(tmp_path / "nats")
    try:
        yield s
    finally:
        await stop_server(s)


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


@pytest.fixture
def devices() -> Devices:
    return Devices()


@pytest.fixture
async def callout(server: Server, devices: Devices) -> AsyncIterator[AuthCallout]:
    nc = await server.login("callout")
    async with AuthCallout(nc, server.issuer.seed, "ECHO", devices.authorize) as co:
        yield co


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


# ------------------------------------------------------------------ static users


async def test_static_service_user(server: Server) -> None:
    errors: list[str] = []
    svc = await server.login("svc", errors)
    tester = await server.login("tester")

    async def answer(m: Msg) -> None:
        await m.respond(b"pong:" + m.data)

    await svc.subscribe("svc.rpc", cb=answer)  # a responder: replies go to any reply subject
    await svc.flush()
    reply = await tester.request("svc.rpc", b"x", timeout=5)
    assert reply.data == b"pong:x"
    await roundtrip(svc, tester, "svc.out.a")

    await svc.publish("elsewhere.a", b"no")
    await svc.subscribe("elsewhere.>")
    await svc.flush()
    await eventually(lambda: violated(errors, "publish", "elsewhere.a"), what="publish violation")
    await eventually(lambda: violated(errors, "subscription", "elsewhere.>"), what="subscribe violation")
    with pytest.raises(nats.errors.TimeoutError):  # a request outside its rights gets no answer
        await svc.request("elsewhere.rpc", b"", timeout=0.3)

    # a bcrypt hash with the $2a$ prefix is accepted too; wrong passwords are refused
    await server.login("legacy")
    await refused(lambda: server.connect("svc", "wrong-password"))


# ------------------------------------------------------------------ devices through the callout


async def test_device_login_through_the_callout(
    server: Server, devices: Devices, callout: AuthCallout, caplog: pytest.LogCaptureFixture
) -> None:
    password = secrets.token_urlsafe(16)
    devices.entries["dev-1"] = (
        password,
        request_permissions(["dev.1.>"], inbox=DEVICE_INBOX) | NatsPermissions(sub_allow=("cmd.1.>",)),
    )
    tester = await server.login("tester")
    sniffed: list[Msg] = []

    async def sniff(m: Msg) -> None:
        sniffed.append(m)

    await tester.subscribe(">", cb=sniff)  # a wildcard subscriber must not read logins
    await tester.flush()

    errors: list[str] = []
    dev = await server.connect("dev-1", password, errors=errors, inbox=DEVICE_INBOX, name="agent-dev-1")
    assert devices.calls[-1][0] == "dev-1"
    info = devices.calls[-1][1]
    assert info.name == "agent-dev-1" and info.host == "127.0.0.1" and info.tls_version is None
    assert info.server_name == "echo-test" and info.user_nkey.startswith("U")

    await roundtrip(dev, tester, "dev.1.data")  # within its rights: publish...
    await roundtrip(tester, dev, "cmd.1.deploy")  # ...and subscribe
    await dev.publish("dev.2.data", b"x")
    await dev.subscribe("dev.2.>")
    await dev.subscribe("$SYS.REQ.USER.AUTH")
    await dev.flush()
    await eventually(lambda: violated(errors, "publish", "dev.2.data"), what="publish violation")
    await eventually(lambda: violated(errors, "subscription", "dev.2.>"), what="subscribe violation")
    await eventually(lambda: violated(errors, "subscription", "$SYS.REQ.USER.AUTH"), what="$SYS denied")
    assert not any(password.encode() in m.data for m in sniffed)
    assert not any(m.subject.startswith("$SYS.") for m in sniffed)

    caplog.set_level(logging.WARNING, logger="echo_shared.natsauth")
    caplog.clear()
    await refused(lambda: server.connect("dev-1", "not-" + password))
    await refused(lambda: server.connect("nobody", password))
    devices.fail_with = RuntimeError(f"directory down while checking {password}")
    await refused(lambda: server.connect("dev-1", password))
    devices.fail_with = None
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3, [r.getMessage() for r in refusals]
    assert not any(password in r.getMessage() for r in caplog.records)
    assert "RuntimeError" in refusals[-1].getMessage()
    assert callout.accepted == 1 and callout.refused == 3

    # a login's cost: a static user (bcrypt cost 4) against a device (callout round trip)
    costs: dict[str, float] = {}
    for who, connect in (
        ("static", lambda: server.login("svc")),
        ("callout", lambda: server.connect("dev-1", password, inbox=DEVICE_INBOX)),
    ):
        started = time.perf_counter()
        for _ in range(10):
            await (await connect()).close()
        costs[who] = (time.perf_counter() - started) / 10 * 1000
    print(json.dumps({"connect_ms": costs}))
    assert costs["callout"] < 500


async def test_permissions_are_fixed_per_connection_and_bounded_by_a_user_ttl(
    server: Server, devices: Devices
) -> None:
    """An existing connection keeps the permissions it logged in with; with a user TTL the
    server ends it when its JWT expires (nats-py closes for good) and a new connection
    gets the grant of that moment."""
    nc = await server.login("callout")
    password = secrets.token_urlsafe(16)
    devices.entries["dev-1"] = (password, request_permissions(["dev.1.a"], inbox=DEVICE_INBOX))
    tester = await server.login("tester")
    # 3 s: the round trip below must fit in the first login's life even on a loaded machine
    async with AuthCallout(nc, server.issuer.seed, "ECHO", devices.authorize, user_ttl=3.0):
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        errors: list[str] = []
        dev = await server.connect("dev-1", password, errors=errors, inbox=DEVICE_INBOX, closed_cb=on_closed)
        devices.entries["dev-1"] = (password, request_permissions(["dev.1.b"], inbox=DEVICE_INBOX))
        await roundtrip(dev, tester, "dev.1.a")
        await dev.publish("dev.1.b", b"x")
        await dev.flush()
        await eventually(lambda: violated(errors, "publish", "dev.1.b"), what="old grant still in force")
        await asyncio.wait_for(closed.wait(), 15)
        assert "authentication expired" in str(dev.last_error).lower()
        dev = await server.connect("dev-1", password, inbox=DEVICE_INBOX)
        await roundtrip(dev, tester, "dev.1.b")


async def test_malformed_requests_do_not_stop_the_service(tmp_path: Path, devices: Devices) -> None:
    """The server forbids publishing on $SYS.REQ.USER.AUTH in the callout account, so junk
    is sent through a plain server the service also listens on."""
    port = free_port()
    proc = ManagedProcess(
        "plain", [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], log_dir=tmp_path
    )
    clients: list[NatsClient] = []
    try:
        await wait_listening(proc, port)
        url = f"nats://127.0.0.1:{port}"
        clients += [await nats.connect(url), await nats.connect(url)]
        issuer = NkeyPair.generate()
        async with AuthCallout(clients[0], issuer.seed, "ECHO", devices.authorize) as co:
            junk = [b"", b"garbage", b"a.b.c", b"eyJ0eXAiOiJKV1QifQ.e30.AAAA", "é".encode("latin-1")]
            for data in junk:
                reply = await clients[1].request("$SYS.REQ.USER.AUTH", data, timeout=5)
                assert reply.data == b""  # read as a refusal by a server
            await clients[1].publish("$SYS.REQ.USER.AUTH", b"no reply subject")
            await clients[1].flush()
            await eventually(lambda: co.malformed == len(junk) + 1, what="junk counted")
            # still serving: a well-formed request (from a made-up server) gets a signed answer
            fake_server = NkeyPair.generate(PREFIX_SERVER)
            user = NkeyPair.generate(PREFIX_USER)
            devices.entries["dev-9"] = ("pw", NatsPermissions(pub_allow=("a",)))
            request = encode_jwt(
                {
                    "aud": "nats-authorization-request",
                    "sub": issuer.public_key,
                    "nats": {
                        "server_id": {"id": fake_server.public_key, "name": "x", "host": "h"},
                        "user_nkey": user.public_key,
                        "client_info": {"host": "10.0.0.9"},
                        "connect_opts": {"user": "dev-9", "pass": "pw", "protocol": 1},
                        "type": "authorization_request",
                        "version": 2,
                    },
                },
                fake_server,
            )
            reply = await clients[1].request("$SYS.REQ.USER.AUTH", request.encode(), timeout=5)
            answer = decode_jwt(reply.data.decode())
            assert answer["sub"] == user.public_key and answer["aud"] == fake_server.public_key
            user_jwt = decode_jwt(answer["nats"]["jwt"])
            assert user_jwt["aud"] == "ECHO" and user_jwt["nats"]["pub"] == {"allow": ["a"]}
            # a request signed by another key than the server it names is refused
            forged = request.rsplit(".", 1)[0] + "." + request.rsplit(".", 1)[1][::-1]
            reply = await clients[1].request("$SYS.REQ.USER.AUTH", forged.encode(), timeout=5)
            assert reply.data == b""
            assert co.accepted == 1
    finally:
        for nc in clients:
            await nc.close()
        proc.stop()


async def test_callout_down_then_back(server: Server, devices: Devices) -> None:
    nc = await server.login("callout")
    password = secrets.token_urlsafe(16)
    devices.entries["dev-1"] = (password, request_permissions(["dev.1.>"], inbox=DEVICE_INBOX))
    co = AuthCallout(nc, server.issuer.seed, "ECHO", devices.authorize)
    await co.start()
    await (await server.connect("dev-1", password, inbox=DEVICE_INBOX)).close()
    await co.close()
    await co.close()  # idempotent

    started = time.monotonic()
    await refused(lambda: server.connect("dev-1", password, inbox=DEVICE_INBOX))
    waited = time.monotonic() - started
    assert AUTH_TIMEOUT * 0.8 <= waited < AUTH_TIMEOUT + 3, waited  # refused after the server's timeout

    async with AuthCallout(nc, server.issuer.seed, "ECHO", devices.authorize):
        dev = await server.connect("dev-1", password, inbox=DEVICE_INBOX)
        assert dev.is_connected


async def test_tls_listener_with_the_callout(tmp_path: Path, devices: Devices) -> None:
    tls = make_tls(tmp_path)
    server = await start_server(tmp_path / "nats", tls=tls)
    try:
        assert server.url.startswith("tls://")
        nc = await server.login("callout")
        password = secrets.token_urlsafe(16)
        devices.entries["dev-1"] = (password, request_permissions(["dev.1.>"], inbox=DEVICE_INBOX))
        async with AuthCallout(nc, server.issuer.seed, "ECHO", devices.authorize):
            dev = await server.connect("dev-1", password, inbox=DEVICE_INBOX)
            tester = await server.login("tester")
            await roundtrip(dev, tester, "dev.1.x")
            assert devices.calls[-1][1].tls_version is not None
            with pytest.raises(Exception):  # noqa: B017 - a plain client cannot talk to a TLS listener
                await nats.connect(
                    server.url.replace("tls://", "nats://"),
                    user="dev-1",
                    password=password,
                    allow_reconnect=False,
                    connect_timeout=2,
                )
            untrusted = ssl.create_default_context()  # system CAs: our CA is unknown
            with pytest.raises(Exception):  # noqa: B017
                await nats.connect(
                    server.url, user="dev-1", password=password, tls=untrusted, allow_reconnect=False
                )
    finally:
        await stop_server(server)


# ------------------------------------------------------------------ JetStream, least privilege


NS = "t1"
STREAM, BUCKET, STORE = "T1_DATA", "T1_PROGRESS", "T1_STATE"
MY_SUBJECT, OTHER_SUBJECT = "t1.df.f.a.b", "t1.df.f.a.c"
MY_CONSUMER, OTHER_CONSUMER = "t1-f-b-from-a", "t1-f-c-from-a"
MY_KEY, OTHER_KEY = "f.a.b", "f.a.c"


def device_js_permissions(*, write_objects: bool) -> NatsPermissions:
    inbox = DEVICE_INBOX
    return NatsPermissions.union(
        js_publish_permissions([MY_SUBJECT], inbox=inbox),
        js_stream_permissions(STREAM, inbox=inbox),
        js_consumer_permissions(STREAM, MY_CONSUMER, MY_SUBJECT, delete=True, inbox=inbox),
        kv_permissions(BUCKET, [MY_KEY], read=True, write=True, watch=True, inbox=inbox),
        object_store_permissions(STORE, read=True, write=write_objects, inbox=inbox),
    )


async def test_jetstream_with_least_privilege(server: Server, devices: Devices, callout: AuthCallout) -> None:
    admin = await server.login("admin")
    ajs = admin.jetstream(timeout=5)
    await ajs.add_stream(
        StreamConfig(name=STREAM, subjects=[f"{NS}.df.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    akv = await ajs.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, direct=True))
    await akv.put(MY_KEY, b"p0")
    await akv.put(OTHER_KEY, b"secret")
    store = await ajs.create_object_store(STORE)
    snapshot = secrets.token_bytes(3_000_000)  # enough chunks for the server to ask for flow control
    await store.put("snap-1", snapshot)
    await ajs.add_consumer(
        STREAM, ConsumerConfig(durable_name=OTHER_CONSUMER, name=OTHER_CONSUMER, filter_subject=OTHER_SUBJECT)
    )
    await ajs.publish(OTHER_SUBJECT, b"not yours", stream=STREAM)

    password = secrets.token_urlsafe(16)
    devices.entries["dev-1"] = (password, device_js_permissions(write_objects=True))
    devices.entries["dev-ro"] = (password, device_js_permissions(write_objects=False))
    errors: list[str] = []
    dev = await server.connect("dev-1", password, errors=errors, inbox=DEVICE_INBOX)
    js = dev.jetstream(timeout=5)

    # the data path: publish into the work queue, pull with the task's durable consumer, ack
    ack = await js.publish(MY_SUBJECT, b"r1", stream=STREAM)
    assert ack.stream == STREAM
    await js.stream_info(STREAM)
    sub = await js.pull_subscribe(
        MY_SUBJECT,
        durable=MY_CONSUMER,
        stream=STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60, filter_subject=MY_SUBJECT),
    )
    [msg] = await sub.fetch(1, timeout=5)
    assert msg.data == b"r1"
    await msg.ack_sync(timeout=5)
    again = await js.pull_subscribe(MY_SUBJECT, durable=MY_CONSUMER, stream=STREAM)  # exists: info only
    await js.publish(MY_SUBJECT, b"r2", stream=STREAM)
    [msg] = await again.fetch(1, timeout=5)
    await msg.nak()
    [msg] = await again.fetch(1, timeout=5)
    assert msg.data == b"r2"
    await msg.ack_sync(timeout=5)

    assert (await ajs.consumer_info(STREAM, MY_CONSUMER)).num_ack_pending == 0

    # progress: put, get, watch a key of the bucket
    kv = await js.key_value(BUCKET)
    await kv.put(MY_KEY, b"p1")
    assert (await kv.get(MY_KEY)).value == b"p1"
    watcher = await kv.watch(MY_KEY)
    first = await watcher.updates(timeout=5)
    assert first is not None and first.value == b"p1"
    await akv.put(MY_KEY, b"p2")
    seen = None
    deadline = time.monotonic() + 5
    while seen is None or seen.value != b"p2":
        assert time.monotonic() < deadline, "the watch missed the update"
        seen = await watcher.updates(timeout=5)
    await watcher.stop()
    await kv.delete(MY_KEY)

    # state: read the snapshot the master wrote, write one back
    obj = await js.object_store(STORE)
    assert (await asyncio.wait_for(obj.get("snap-1"), 10)).data == snapshot  # stalls without $JS.FC
    await obj.put("snap-2", b"from the device")
    await obj.put("snap-2", b"from the device, again")  # a replacement purges old chunks
    assert (await store.get("snap-2")).data == b"from the device, again"
    assert not errors, errors  # all of that within the granted subjects

    # everything else is refused
    quick = dev.jetstream(timeout=0.5)
    with pytest.raises(nats.errors.TimeoutError):
        await quick.pull_subscribe(OTHER_SUBJECT, durable=OTHER_CONSUMER, stream=STREAM)
    assert violated(errors, "publish", f"$JS.API.CONSUMER.INFO.{STREAM}.{OTHER_CONSUMER}")
    stolen = await quick.pull_subscribe_bind(OTHER_CONSUMER, stream=STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await stolen.fetch(1, timeout=0.5)
    await eventually(
        lambda: violated(errors, "publish", f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{OTHER_CONSUMER}"),
        what="fetch from another consumer refused",
    )
    with pytest.raises(nats.errors.TimeoutError):
        await quick.pull_subscribe(
            OTHER_SUBJECT,
            durable="t1-mine-too",
            stream=STREAM,
            config=ConsumerConfig(filter_subject=OTHER_SUBJECT),
        )
    with pytest.raises(nats.errors.TimeoutError):
        await quick.publish(OTHER_SUBJECT, b"x", stream=STREAM)
    assert violated(errors, "publish", OTHER_SUBJECT)
    qkv = await quick.key_value(BUCKET)
    with pytest.raises(nats.errors.TimeoutError):
        await qkv.get(OTHER_KEY)
    with pytest.raises(nats.errors.TimeoutError):
        await qkv.put(OTHER_KEY, b"overwrite")
    assert (await akv.get(OTHER_KEY)).value == b"secret"
    with pytest.raises(nats.errors.TimeoutError):
        await quick.delete_consumer(STREAM, OTHER_CONSUMER)
    with pytest.raises(nats.errors.TimeoutError):
        await quick.add_stream(StreamConfig(name="T1_MINE", subjects=["t1.mine.>"]))
    assert (await ajs.consumer_info(STREAM, OTHER_CONSUMER)).num_pending == 1

    # the durable consumer may be deleted by its task when it goes for good
    assert await js.delete_consumer(STREAM, MY_CONSUMER)

    # a device granted read-only state cannot write it
    ro_errors: list[str] = []
    ro = await server.connect("dev-ro", password, errors=ro_errors, inbox=DEVICE_INBOX)
    ro_obj = await ro.jetstream(timeout=0.5).object_store(STORE)
    assert (await asyncio.wait_for(ro_obj.get("snap-1"), 10)).data == snapshot
    with pytest.raises(nats.errors.TimeoutError):
        await ro_obj.put("snap-3", b"x")
    await eventually(lambda: any("$o.t1_state." in e for e in ro_errors), what="object write refused")
