"""The brokers as deploy/compose.yaml configures them, run here for real (no Docker engine
needed): the compose files' Mosquitto config and Redis command line, with the bundle's
paths and a free port, accept the services' logins over TLS and refuse anonymous ones."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from echo_cli.devstack import ManagedProcess, free_port, wait_for_port
from echo_cli.devstack.brokers import MOSQUITTO_CANDIDATES, REDIS_CANDIDATES, _find, dynsec_plugin
from echo_shared.bundle import allow_traversal, create_bundle, mosquitto_owner
from echo_shared.credentials import Access
from echo_shared.mqtt import MqttClient, MqttRefused

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


async def test_composes_mosquitto_config_is_tls_only_and_authenticating(tmp_path: Path) -> None:
    bundle = create_bundle(tmp_path / "pki")
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    owner = mosquitto_owner()
    if owner is not None:
        os.chown(data, *owner)
        allow_traversal(tmp_path)
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = conf.replace("/pki/", f"{bundle.root}/").replace("/mosquitto/data/", f"{data}/")
    conf = re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf = conf.replace("/usr/lib/mosquitto_dynamic_security.so", dynsec_plugin())
    (tmp_path / "mosquitto.conf").write_text(conf)
    binary = _find(MOSQUITTO_CANDIDATES)
    assert binary, "mosquitto is installed by make deps"
    proc = ManagedProcess(
        "mosquitto-compose", [binary, "-c", str(tmp_path / "mosquitto.conf")], log_dir=tmp_path
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        url = f"mqtts://127.0.0.1:{port}"
        master = Access.build(bundle.credentials("master"), mqtt_url=url)
        async with MqttClient(url, "m-" + uuid.uuid4().hex[:6], login=master.mqtt, tls=master.tls()) as c:
            assert c.connected
        with pytest.raises(MqttRefused):
            await MqttClient(url, "anon-" + uuid.uuid4().hex[:6], tls=master.tls()).start(timeout=5)
    finally:
        proc.stop(5)


async def test_composes_redis_command_is_tls_only_with_acl_users(tmp_path: Path) -> None:
    bundle = create_bundle(tmp_path / "pki", owners={"redis": (0, 0)})
    port = free_port()
    argv = [str(a) for a in compose()["services"]["redis"]["command"]]
    argv = [a.replace("/pki/", f"{bundle.root}/") for a in argv]
    argv[argv.index("--tls-port") + 1] = str(port)
    binary = _find(REDIS_CANDIDATES)
    assert binary, "redis-server is installed by make deps"
    proc = ManagedProcess(
        "redis-compose", [binary, *argv[1:], "--bind", "127.0.0.1", "--dir", str(tmp_path)], log_dir=tmp_path
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        url = f"rediss://127.0.0.1:{port}/0"
        reg = Access.build(bundle.credentials("registry"), redis_url=url)
        r = aioredis.from_url(url, **reg.redis_options())
        try:
            await r.set("echo:device:x", "1")
            with pytest.raises(NoPermissionError):
                await r.get("echo:df:x")
        finally:
            await r.aclose()
        anon = aioredis.from_url(url, ssl_ca_certs=str(bundle.ca_file))
        try:
            with pytest.raises((AuthenticationError, RedisConnectionError, NoPermissionError)):
                await anon.get("echo:device:x")
        finally:
            await anon.aclose()
    finally:
        proc.stop(5)
