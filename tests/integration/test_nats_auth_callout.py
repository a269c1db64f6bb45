"""NATS logins on a real nats-server: static users, and devices through the auth callout.

Grants, refusals and what is logged, a user TTL, malformed requests, the callout down and
back, a TLS listener. The server and the toy device directory: ``nats_auth_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import time
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from echo_cli.devstack.brokers import nats_server_binary
from echo_cli.devstack.processes import ManagedProcess, free_port
from echo_shared.names import Names
from echo_shared.natsauth import AuthCallout, NatsPermissions, request_permissions
from echo_shared.natsjwt import PREFIX_SERVER, PREFIX_USER, NkeyPair, decode_jwt, encode_jwt
from tests.harness.waiting import eventually
from tests.integration.nats_auth_server import (
    AUTH_TIMEOUT,
    DEVICE_INBOX,
    Devices,
    Server,
    make_tls,
    refused,
    roundtrip,
    start_server,
    stop_server,
    violated,
    wait_listening,
)

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
    # 8 s: the login, round trip and violation below must fit in the first login's life even
    # on a machine loaded by the whole suite (CI once took over 3 s for them)
    async with AuthCallout(nc, server.issuer.seed, "ECHO", devices.authorize, user_ttl=8.0):
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
        await asyncio.wait_for(closed.wait(), 30)
        assert "authentication expired" in str(dev.last_error).lower()
        dev = await server.connect("dev-1", password, inbox=DEVICE_INBOX)
        await roundtrip(dev, tester, "dev.1.b")


async def responder_ready(nc: NatsClient, subject: str, timeout: float = 5.0) -> None:
    """Poll (a request each 50 ms, deadline ``timeout``) until ``subject`` has a responder."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(subject, b"", timeout=timeout)
            return
        except nats.errors.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


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
            # the service's queue subscription is flushed, yet nats-server may still answer
            # another client's first request "no responders" for a moment (nats-server#2876;
            # it failed a CI run once): wait until the subject has a responder
            await responder_ready(clients[1], "$SYS.REQ.USER.AUTH")
            junk_before = co.malformed
            for data in junk:
                reply = await clients[1].request("$SYS.REQ.USER.AUTH", data, timeout=5)
                assert reply.data == b""  # read as a refusal by a server
            await clients[1].publish("$SYS.REQ.USER.AUTH", b"no reply subject")
            await clients[1].flush()
            await eventually(lambda: co.malformed - junk_before == len(junk) + 1, what="junk counted")
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


async def test_two_namespaces_share_a_server_and_each_answers_only_for_its_own(server: Server) -> None:
    """Two ECHO namespaces on one NATS server (the test harness's shared brokers, or two
    installations): each namespace's callout answers in its own queue group and stays silent
    on the other's logins, so no valid device is refused by the wrong namespace (before, one
    queue group for all: about half the logins went to the other namespace and were refused)."""
    spaces = {ns: Devices() for ns in ("nsa", "nsb")}
    callouts = []
    for ns, devices in spaces.items():
        names = Names(ns)
        password = secrets.token_urlsafe(16)
        devices.entries[names.device_username("dev-1", "s1")] = (password, request_permissions(["x.>"]))
        nc = await server.login("callout")
        co = AuthCallout(
            nc,
            server.issuer.seed,
            "ECHO",
            devices.authorize,
            queue=names.callout_queue,
            owns=names.owns_username,
        )
        await co.start()
        callouts.append((co, nc, names, password))
    try:
        for _ in range(10):
            for _co, _nc, names, password in callouts:
                await (await server.connect(names.device_username("dev-1", "s1"), password)).close()
        for co, _nc, _names, _password in callouts:
            assert co.accepted == 10 and co.refused == 0
        assert all(u.startswith(f"{ns}.") for ns, d in spaces.items() for u, _ in d.calls), (
            "only its own asked"
        )
    finally:
        for co, nc, _names, _password in callouts:
            await co.close()
            await nc.close()
