"""The brokers as deploy/compose.yaml configures them, run here for real (no Docker engine
needed): the compose files' Mosquitto config and Redis command line, with the bundle's
paths and a free port, accept the services' logins over TLS and refuse anonymous ones."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from echo_cli.devstack import ManagedProcess, free_port, wait_for_port
from echo_cli.devstack.brokers import (
    MOSQUITTO_CANDIDATES,
    REDIS_CANDIDATES,
    _find,
    dynsec_plugin,
    nats_server_binary,
)
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
    bundle = create_bundle(tmp_path / "pki", owners={"redis": (0, 0)}, ha=True)
    port = free_port()
    proc = _compose_redis("redis", bundle.root, port, None, tmp_path)
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


def _compose_redis(name: str, bundle_root: Path, port: int, primary: int | None, tmp: Path) -> ManagedProcess:
    """Compose's own script for ``name`` (``redis``, ``redis-replica``), run by sh as in the
    container, here: the bundle's paths, a data dir, a free port and this host's address
    instead of the containers' names."""
    service = compose()["services"][name]
    assert service["entrypoint"] == ["sh", "-c"]
    (script,) = service["command"]
    binary = _find(REDIS_CANDIDATES)
    assert binary, "redis-server is installed by make deps"
    data = tmp / name
    data.mkdir()
    script = script.replace("/pki/", f"{bundle_root}/").replace("/data/", f"{data}/")
    script = script.replace("--tls-port 6379", f"--tls-port {port} --bind 127.0.0.1 --dir {data}")
    script = script.replace(f"--replica-announce-ip {name}", "--replica-announce-ip 127.0.0.1")
    script = script.replace("exec redis-server", f"exec {binary}")
    if primary is not None:
        script = script.replace("replicaof redis 6379", f"replicaof 127.0.0.1 {primary}")
    return ManagedProcess(f"{name}-compose", ["sh", "-c", script], log_dir=tmp)


async def test_composes_ha_profile_redis_replica_and_sentinel_work(tmp_path: Path) -> None:
    """The ha profile's Redis pair and a sentinel, from compose's commands and the bundle's
    replication.conf and sentinel.conf: the replica syncs over TLS with its login, the
    sentinel watches both and tells a service's login where the primary is — and nothing more."""
    bundle = create_bundle(tmp_path / "pki", owners={"redis": (0, 0)}, ha=True)
    primary, replica, sentinel = free_port(), free_port(), free_port()
    procs = [
        _compose_redis("redis", bundle.root, primary, None, tmp_path),
        _compose_redis("redis-replica", bundle.root, replica, primary, tmp_path),
    ]
    conf = (bundle.root / "redis" / "sentinel.conf").read_text()
    conf = conf.replace("tls-port 26379", f"tls-port {sentinel}\nbind 127.0.0.1").replace(
        "dir /data", f"dir {tmp_path}"
    )
    conf = conf.replace("sentinel monitor echo redis 6379", f"sentinel monitor echo 127.0.0.1 {primary}")
    (tmp_path / "sentinel.conf").write_text(conf)
    binary = _find(REDIS_CANDIDATES)
    assert binary
    procs.append(
        ManagedProcess(
            "sentinel-compose", [binary, str(tmp_path / "sentinel.conf"), "--sentinel"], log_dir=tmp_path
        )
    )
    try:
        for port in (primary, replica, sentinel):
            wait_for_port("127.0.0.1", port, proc=procs[0])
        reg = Access.build(bundle.credentials("registry"), redis_url=f"rediss://127.0.0.1:{primary}/0")
        login = {
            k: v for k, v in reg.redis_options().items() if k in ("username", "password", "ssl_ca_certs")
        }
        s = aioredis.Redis(host="127.0.0.1", port=sentinel, ssl=True, decode_responses=True, **login)
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while True:  # the sentinel learns of the replica from the primary
                replicas = await s.sentinel_slaves("echo")
                if any(
                    "s_down" not in r.get("flags", "") and r.get("master-link-status") == "ok"
                    for r in replicas
                ):
                    break
                assert asyncio.get_running_loop().time() < deadline, replicas
                await asyncio.sleep(0.2)
            assert int((await s.sentinel_get_master_addr_by_name("echo"))[1]) == primary
            with pytest.raises(NoPermissionError):
                await s.execute_command("SENTINEL", "FAILOVER", "echo")
        finally:
            await s.aclose()
        r = aioredis.from_url(f"rediss://127.0.0.1:{primary}/0", **reg.redis_options())
        try:
            await r.set("echo:device:ha", "1")
        finally:
            await r.aclose()
        copy = aioredis.from_url(
            f"rediss://127.0.0.1:{replica}/0", decode_responses=True, **reg.redis_options()
        )
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while await copy.get("echo:device:ha") != "1":  # replicated over TLS
                assert asyncio.get_running_loop().time() < deadline, "the replica never got the write"
                await asyncio.sleep(0.1)
        finally:
            await copy.aclose()
    finally:
        for p in procs:
            p.stop(5)


def test_composes_nats_cluster_configurations_are_valid(tmp_path: Path) -> None:
    bundle = create_bundle(tmp_path / "pki", ha=True)
    for i in (1, 2, 3):
        conf = bundle.root / "nats" / f"cluster-{i}.conf"
        done = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
