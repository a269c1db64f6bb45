"""The brokers as the harness (and the dev stack) start them: TLS only, nobody anonymous,
each service identity confined to what its role needs."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from echo_cli.devstack import Brokers, ManagedProcess, free_port, wait_for_port
from echo_cli.devstack.brokers import nats_server_binary, start_brokers
from echo_shared.bundle import create_bundle
from echo_shared.credentials import Access, Login
from echo_shared.mqtt import MqttClient, MqttRefused, MqttUnavailable


def test_every_broker_url_is_tls(brokers: Brokers) -> None:
    assert brokers.mqtt_url.startswith("mqtts://")
    assert brokers.nats_url.startswith("tls://")
    assert brokers.redis_url.startswith("rediss://")
    assert brokers.bundle is not None
    for path in (brokers.bundle.ca.key, brokers.bundle.server.key, brokers.bundle.admin_token_file):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    for name in ("master", "registry", "scheduler", "migrator"):
        assert brokers.bundle.credentials_file(name).stat().st_mode & 0o777 == 0o600


async def test_mqtt_refuses_anonymous_wrong_password_and_plaintext(brokers: Brokers) -> None:
    tls = brokers.access().tls()
    with pytest.raises(MqttRefused):
        await MqttClient(brokers.mqtt_url, "anon-" + uuid.uuid4().hex[:6], tls=tls).start(timeout=5)
    with pytest.raises(MqttRefused):
        await MqttClient(
            brokers.mqtt_url, "bad-" + uuid.uuid4().hex[:6], tls=tls, login=Login("master", "wrong")
        ).start(timeout=5)
    plain = brokers.mqtt_url.replace("mqtts://", "mqtt://")
    master = brokers.access("master").mqtt
    with pytest.raises(MqttUnavailable):
        await MqttClient(plain, "plain-" + uuid.uuid4().hex[:6], login=master).start(timeout=2)
    # a client that does not trust our CA does not talk to the broker at all
    with pytest.raises(MqttUnavailable):
        await MqttClient(
            brokers.mqtt_url,
            "untrusting-" + uuid.uuid4().hex[:6],
            login=master,
            tls=ssl.create_default_context(),
        ).start(timeout=2)


async def test_mqtt_service_roles_are_confined(brokers: Brokers) -> None:
    """The registry reads registrations and heartbeats; it neither commands devices nor reads acks."""
    async with brokers.mqtt_client("reg-" + uuid.uuid4().hex[:6], identity="registry") as reg:
        await reg.subscribe("ns1/dev/+/hb", timeout=5)
        for forbidden in ("#", "ns1/dev/+/ack", "ns1/dev/edge-1/cmd", "$CONTROL/dynamic-security/#"):
            with pytest.raises(MqttUnavailable, match="refused"):
                await reg.subscribe(forbidden, timeout=5)
        with pytest.raises(MqttUnavailable, match="refused"):
            await asyncio.wait_for(reg.publish("ns1/dev/edge-1/cmd", b"{}"), 5)
    async with brokers.mqtt_client("mst-" + uuid.uuid4().hex[:6], identity="master") as mst:
        await asyncio.wait_for(mst.publish("ns1/dev/edge-1/cmd", b"{}"), 5)  # its job
        with pytest.raises(MqttUnavailable, match="refused"):
            await asyncio.wait_for(mst.publish("ns1/dev/edge-1/hb", b"{}"), 5)  # a device's


async def test_nats_refuses_anonymous_and_wrong_passwords(brokers: Brokers) -> None:
    tls = brokers.access().tls()
    for opts in ({}, {"user": "master", "password": "wrong"}):
        with pytest.raises((NatsError, NoServersError, OSError)):
            await nats.connect(
                brokers.nats_url,
                tls=tls,
                allow_reconnect=False,
                connect_timeout=2,
                max_reconnect_attempts=0,
                **opts,
            )


async def test_nats_service_users_are_confined(brokers: Brokers) -> None:
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    nc = await nats.connect(brokers.nats_url, error_cb=on_error, **brokers.access("scheduler").nats_options())
    try:
        await nc.publish("ns1.events.device.x.lost", b"forged")  # not the scheduler's to say
        await nc.subscribe("ns1.registry.devices.list")  # nor to answer
        await nc.flush(timeout=5)
        for _ in range(100):
            if len(errors) >= 2:
                break
            await asyncio.sleep(0.02)
        text = " ".join(str(e) for e in errors).lower()
        assert (
            "permissions violation for publish" in text and "permissions violation for subscription" in text
        )
    finally:
        await nc.close()


async def test_redis_refuses_anonymous_and_confines_services(brokers: Brokers) -> None:
    access = brokers.access("registry")
    anon = aioredis.from_url(brokers.redis_url, ssl_ca_certs=str(access.ca_file))
    try:
        with pytest.raises((AuthenticationError, RedisConnectionError, NoPermissionError)) as e:
            await anon.set("ns1:device:x", "1")
        assert "NOAUTH" in str(e.value) or "auth" in str(e.value).lower()
    finally:
        await anon.aclose()
    registry = aioredis.from_url(brokers.redis_url, **access.redis_options())
    master = aioredis.from_url(brokers.redis_url, **brokers.access("master").redis_options())
    try:
        await registry.set("ns1:device:x", "1")
        await master.set("ns1:df:x", "1")
        with pytest.raises(NoPermissionError):
            await registry.get("ns1:df:x")  # the master's dataflows are not the registry's
        with pytest.raises(NoPermissionError):
            await master.get("ns1:device:x")  # nor devices the master's
        with pytest.raises(NoPermissionError):
            await registry.flushall()
        with pytest.raises(NoPermissionError):
            await master.config_get("*")
    finally:
        await registry.aclose()
        await master.aclose()


async def test_the_bundles_nats_server_conf_runs_as_compose_runs_it(tmp_path: Path) -> None:
    """``nats-server -c <bundle>/nats/server.conf -js -sd ... -p ...``: TLS, users, callout."""
    bundle = create_bundle(tmp_path / "pki")
    port = free_port()
    proc = ManagedProcess(
        "nats-compose",
        [nats_server_binary(), "-c", str(bundle.root / "nats" / "server.conf"), "-js", "-sd",
         str(tmp_path / "js"), "-a", "127.0.0.1", "-p", str(port)],
        log_dir=tmp_path,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        a = Access.build(bundle.credentials("registry"), nats_url=f"tls://127.0.0.1:{port}")
        nc = await nats.connect(a.nats_url or "", **a.nats_options())
        assert nc.is_connected
        await nc.close()
        with pytest.raises((NatsError, NoServersError, OSError)):
            await nats.connect(
                f"nats://127.0.0.1:{port}", allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
            )
    finally:
        proc.stop(5)


async def test_the_benchmarks_plaintext_brokers_still_refuse_anonymous_clients(tmp_path: Path) -> None:
    """``tls=False`` (only ``bench/security_cost.py`` asks for it) turns TLS off and nothing
    else: anonymous clients and wrong passwords are refused on all three brokers, and a
    service's own login still works."""
    with start_brokers(tmp_path / "plain", tester=True, tls=False) as plain:
        assert plain.mqtt_url.startswith("mqtt://") and plain.nats_url.startswith("nats://")
        assert plain.redis_url.startswith("redis://")
        for login in (None, Login("master", "wrong")):
            with pytest.raises(MqttRefused):
                await MqttClient(plain.mqtt_url, "anon-" + uuid.uuid4().hex[:6], login=login).start(timeout=5)
        async with plain.mqtt_client("mst-" + uuid.uuid4().hex[:6], identity="master") as mst:
            await asyncio.wait_for(mst.publish("ns1/dev/edge-1/cmd", b"{}"), 5)
        for opts in ({}, {"user": "master", "password": "wrong"}):
            with pytest.raises((NatsError, NoServersError, OSError)):
                await nats.connect(
                    plain.nats_url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0, **opts
                )
        nc = await nats.connect(plain.nats_url, **plain.access("scheduler").nats_options())
        await nc.close()
        anon = aioredis.from_url(plain.redis_url)
        try:
            with pytest.raises((AuthenticationError, RedisConnectionError, NoPermissionError)):
                await anon.set("ns1:device:x", "1")
        finally:
            await anon.aclose()
        registry = aioredis.from_url(plain.redis_url, **plain.access("registry").redis_options())
        try:
            await registry.set("ns1:device:x", "1")
        finally:
            await registry.aclose()
