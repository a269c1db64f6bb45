"""Devices on a secured broker: enrolment, least privilege, revocation, rotation.

Real Mosquitto (TLS, dynamic security), NATS and Redis; agents enrolled through the API
the way a real device is (``--enrol-token``, ``--state-dir``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import nats
import pytest

from echo_cli.devstack.platform import AgentSpec, Platform
from echo_shared.credentials import Access, Credentials, client_tls
from echo_shared.messages import Binding, DeployTask
from echo_shared.mqtt import MqttClient, MqttMessage, MqttRefused, MqttUnavailable
from echo_shared.names import Names
from tests.conftest import PlatformFactory
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

EDGES = (
    AgentSpec("edge-1", "edge", cpu=1.0, memory_mb=512),
    AgentSpec("edge-2", "edge", cpu=1.0, memory_mb=512),
)


def device_access(platform: Platform, device: str) -> Access:
    creds = Credentials.load(platform.state_dir(device) / "credentials.json")
    return Access.build(creds)


def two_edges(name: str, out: Path, count: int, rate: float = 0) -> dict[str, object]:
    return {
        "name": name,
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": count, "rate": rate},
                "placement": {"device": "edge-1"},
            },
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(out)},
                "placement": {"device": "edge-2"},
            },
        ],
        "edges": [{"from": "gen", "to": "sink"}],
    }


def test_credentials_file_is_private_and_complete(platform_factory: PlatformFactory) -> None:
    platform, _api = platform_factory(EDGES)
    path = platform.state_dir("edge-1") / "credentials.json"
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["device"] == "edge-1"
    assert doc["mqtt_url"].startswith("mqtts://")
    assert {"username", "password", "ca_file"} <= doc.keys()
    assert "nats_url" not in doc  # an edge device that does not reach NATS gets no NATS login
    assert Path(doc["ca_file"]).read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_grants_follow_the_dataflow_and_a_device_sees_only_its_own_topics(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory(EDGES)
    out = tmp_path / "out.jsonl"
    df_id = api.submit(two_edges("granted", out, count=2000))
    api.wait_state(df_id, "completed", timeout=60)
    lines = out.read_text().splitlines()
    assert len(lines) == 2000 and len({json.loads(x)["seq"] for x in lines}) == 2000
    names = Names(platform.namespace)
    topic = names.data_topic(df_id, "gen", "sink")

    async def probe() -> None:
        a = device_access(platform, "edge-1")
        seen: list[str] = []

        def on(m: MqttMessage) -> None:
            seen.append(m.topic)

        async with MqttClient(
            a.mqtt_url or "", f"probe-{uuid.uuid4().hex[:6]}", login=a.mqtt, tls=a.tls(), on_message=on
        ) as c:
            # everything: refused; another device's commands: refused; its own commands: fine
            for forbidden in ("#", names.command_topic("edge-2"), f"{names.namespace}/dev/+/cmd"):
                with pytest.raises(MqttUnavailable, match="refused"):
                    await c.subscribe(forbidden, timeout=5)
            await c.subscribe(names.command_topic("edge-1"), timeout=5)
            # a command forged for edge-2 never leaves the broker
            forged = DeployTask(
                cmd_id="forged",
                dataflow="evil",
                task="x",
                generation=1,
                operator="process",
                config={"command": ["sh", "-c", "id > /tmp/pwned"]},
                outputs=[Binding(peer="y", topic=names.data_topic("evil", "x", "y"))],
            )
            with pytest.raises(MqttUnavailable, match="refused"):
                await asyncio.wait_for(c.publish(names.command_topic("edge-2"), forged.to_bytes()), 5)
            # the finished dataflow's channel is no longer edge-1's to write
            with pytest.raises(MqttUnavailable, match="refused"):
                await asyncio.wait_for(c.publish(topic, b"{}"), 5)
        assert all(t.startswith(names.device_prefix("edge-1")) for t in seen), seen

    asyncio.run(probe())
    assert not (platform.workdir / "agents" / "edge-2" / "evil").exists()
    wait_until(lambda: all(d["tasks"] == 0 for d in api.devices().values()), what="no task left anywhere")


def test_anonymous_plaintext_and_wrong_passwords_are_refused(platform_factory: PlatformFactory) -> None:
    platform, _api = platform_factory(EDGES)
    a = device_access(platform, "edge-1")
    assert a.mqtt_url is not None and a.mqtt is not None

    async def attempts() -> None:
        with pytest.raises(MqttRefused):
            await MqttClient(a.mqtt_url or "", "anon-" + uuid.uuid4().hex[:6], tls=a.tls()).start(timeout=5)
        wrong = type(a.mqtt)(a.mqtt.username, "not-the-password")
        with pytest.raises(MqttRefused):
            await MqttClient(
                a.mqtt_url or "", "wrong-" + uuid.uuid4().hex[:6], login=wrong, tls=a.tls()
            ).start(timeout=5)
        plain = (a.mqtt_url or "").replace("mqtts://", "mqtt://")
        with pytest.raises(MqttUnavailable):
            await MqttClient(plain, "plain-" + uuid.uuid4().hex[:6], login=a.mqtt).start(timeout=3)

    asyncio.run(attempts())


def test_revoked_device_is_dropped_and_its_tasks_fail_over(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    fleet = (*EDGES, AgentSpec("edge-3", "edge", cpu=1.0, memory_mb=512))
    platform, api = platform_factory(fleet)
    out = tmp_path / "out.jsonl"
    spec = two_edges("revoke", out, count=10_000_000, rate=200)
    spec["tasks"][0]["placement"] = {"device": "edge-3"}  # type: ignore[index]
    spec["tasks"][1]["placement"] = {"tier": "edge", "anti_affinity": ["gen"]}  # type: ignore[index]
    df_id = api.submit(spec)
    df = api.wait_state(df_id, "running")
    victim = next(t["device"] for t in df["tasks"] if t["id"] == "sink")
    old = device_access(platform, victim)

    r = api.http.post(f"/api/v1/devices/{victim}/revoke")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    # within 5 s: the broker dropped the agent (it stops: its credentials are refused)
    wait_until(lambda: not platform.agents[victim].alive(), timeout=5, what=f"{victim}'s agent dropped")
    assert "refuses the credentials" in platform.agents[victim].log_tail()
    wait_until(lambda: api.devices()[victim]["status"] == "revoked", timeout=5, what="status revoked")

    async def refused() -> None:
        with pytest.raises(MqttRefused):
            await MqttClient(
                old.mqtt_url or "", "x-" + uuid.uuid4().hex[:6], login=old.mqtt, tls=old.tls()
            ).start(timeout=5)

    asyncio.run(refused())
    # its task failed over to another edge device
    wait_until(
        lambda: (
            next(t for t in api.dataflow(df_id)["tasks"] if t["id"] == "sink")["device"] not in (victim, None)
        ),
        timeout=30,
        what="the sink failed over",
    )
    api.wait_state(df_id, "running", timeout=30)
    # revoking twice is fine; an unknown device is a 404
    assert api.http.post(f"/api/v1/devices/{victim}/revoke").status_code == 200
    assert api.http.post("/api/v1/devices/nope/revoke").status_code == 404


def test_enrolment_token_is_single_use_and_ids_are_not_reused(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory(EDGES)
    r = api.http.post("/api/v1/enrolments", json={"device": "edge-9", "tier": "edge", "ttl": "5m"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert set(r.json()) == {"device", "token", "expires"}
    # an existing device id cannot be enrolled again
    dup = api.http.post("/api/v1/enrolments", json={"device": "edge-1", "tier": "edge"})
    assert dup.status_code == 409, dup.text
    bad = api.http.post("/api/v1/enrolments", json={"device": "a b", "tier": "moon", "ttl": "soon"})
    assert bad.status_code == 422
    locs = {e["loc"] for e in bad.json()["errors"]}
    assert {"device", "tier", "ttl"} <= {loc.split(".")[-1] for loc in locs} | locs, bad.json()

    def agent(state: Path, tok: str) -> subprocess.CompletedProcess[str]:
        env = platform.agent_env()
        env["ECHO_NATS_URL"] = ""
        return subprocess.run(
            [sys.executable, "-m", "echo_agent", "--device-id", "edge-9", "--tier", "edge",
             "--enrol-token", tok, "--state-dir", str(state), "--data-dir", str(tmp_path / "data")],
            env={**__import__("os").environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip

    # first use works (the agent then runs: stop it right after it enrolled)
    httpx.post(  # consume the token the way the agent would, to test the second use cheaply
        f"{platform.api_url}/api/v1/enrol",
        json={"device": "edge-9", "tier": "edge"},
        headers={"Authorization": f"Bearer {token}"},
        verify=platform.api_verify,
    ).raise_for_status()
    again = agent(tmp_path / "state-b", token)
    assert again.returncode == 2
    lines = [x for x in again.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "unknown, expired or already used" in lines[0], again.stderr
    unknown = agent(tmp_path / "state-c", "echoenrol_nothing")
    assert unknown.returncode == 2 and "unknown, expired or already used" in unknown.stderr
    # the audit trail has the enrolment and the refused reuse
    entries = api.http.get("/api/v1/audit", params={"limit": 50}).json()
    enrols = [e for e in entries if e["action"] == "device.enrol"]
    assert {(str(e["result"]), e["target"].get("device")) for e in enrols} >= {
        ("201", "edge-9"),
        ("401", "edge-9"),
    }


def test_rotation_hands_new_credentials_and_retires_the_old(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory(EDGES, env={"ECHO_ROTATION_GRACE": "2"})
    out = tmp_path / "out.jsonl"
    df_id = api.submit(two_edges("rotate", out, count=10_000_000, rate=100))
    api.wait_state(df_id, "running")
    wait_until(lambda: out.exists() and out.stat().st_size > 0, what="records at the sink")
    old = device_access(platform, "edge-1")

    r = api.http.post("/api/v1/devices/edge-1/rotate")
    assert r.status_code == 200, r.text
    new_user = r.json()["username"]
    assert new_user != (old.mqtt.username if old.mqtt else None)
    saved = json.loads((platform.state_dir("edge-1") / "credentials.json").read_text())
    assert saved["username"] == new_user  # saved before the agent acknowledged

    async def old_refused() -> bool:
        try:
            c = MqttClient(old.mqtt_url or "", "old-" + uuid.uuid4().hex[:6], login=old.mqtt, tls=old.tls())
            await c.start(timeout=3)
        except MqttRefused:
            return True
        await c.close()
        return False

    wait_until(lambda: asyncio.run(old_refused()), timeout=15, what="the old login retired")
    # the agent carries on with the new login: online, and its generator still feeds the sink
    size = out.stat().st_size
    wait_until(
        lambda: out.stat().st_size > size + 1000, timeout=20, what="records flowing after the rotation"
    )
    assert platform.agents["edge-1"].alive()
    assert api.devices()["edge-1"]["status"] == "online"
    assert api.http.post("/api/v1/devices/nope/rotate").status_code == 404


def test_an_agent_enrols_from_a_token_file_and_restarts_with_its_credentials(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory(EDGES)
    r = api.http.post("/api/v1/enrolments", json={"device": "edge-8", "tier": "edge"})
    assert r.status_code == 201, r.text
    token_file = tmp_path / "edge-8.token"
    token_file.write_text(r.json()["token"])
    token_file.chmod(0o644)
    state = tmp_path / "state"
    argv = [
        sys.executable, "-m", "echo_agent", "--device-id", "edge-8", "--tier", "edge",
        "--enrol-token-file", str(token_file), "--state-dir", str(state), "--data-dir", str(tmp_path / "d"),
    ]  # fmt: skip
    env = {**__import__("os").environ, **platform.agent_env(), "ECHO_NATS_URL": ""}
    loose = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert loose.returncode == 2 and "chmod 600" in loose.stderr, loose.stderr  # a readable secret: refused
    token_file.chmod(0o600)
    from echo_cli.devstack import ManagedProcess

    for run in range(2):  # the second start reuses credentials.json (the token is used up)
        proc = ManagedProcess(f"edge-8-{run}", argv, log_dir=tmp_path / "logs", env=env)
        try:
            platform.agents["edge-8"] = proc
            platform.wait_devices({"edge-8"}, timeout=30)
        finally:
            proc.stop(10)
            platform.agents.pop("edge-8", None)
        assert (state / "credentials.json").stat().st_mode & 0o777 == 0o600


def test_revocation_ends_the_devices_nats_connections(platform_factory: PlatformFactory) -> None:
    """The callout checks a NATS login when a connection opens; revoking a device also ends
    the connections it has open (KICK), and they cannot come back."""
    platform, api = platform_factory(EDGES)
    r = api.http.post("/api/v1/enrolments", json={"device": "fog-9", "tier": "fog"})
    token = r.json()["token"]
    login = httpx.post(
        f"{platform.api_url}/api/v1/enrol",
        json={"device": "fog-9", "tier": "fog", "nats": True},
        headers={"Authorization": f"Bearer {token}"},
        verify=platform.api_verify,
    )
    assert login.status_code == 201, login.text
    doc = login.json()
    assert doc["nats_url"] and doc["nats_username"] and doc["nats_password"]
    ca = platform.brokers.bundle.ca_file if platform.brokers.bundle else None

    async def scenario() -> None:
        disconnected, closed = asyncio.Event(), asyncio.Event()

        async def on_disconnect() -> None:
            disconnected.set()

        async def on_closed() -> None:
            closed.set()

        nc = await nats.connect(
            platform.brokers.nats_url,
            user=doc["nats_username"],
            password=doc["nats_password"],
            tls=client_tls(ca),
            inbox_prefix=Names(platform.namespace).device_inbox("fog-9"),
            disconnected_cb=on_disconnect,
            closed_cb=on_closed,
            max_reconnect_attempts=3,
            reconnect_time_wait=0.2,
        )
        assert nc.is_connected
        t0 = time.monotonic()
        resp = await asyncio.to_thread(api.http.post, "/api/v1/devices/fog-9/revoke")
        assert resp.status_code == 200, resp.text
        await asyncio.wait_for(disconnected.wait(), 5)
        assert time.monotonic() - t0 < 5
        await asyncio.wait_for(closed.wait(), 15)  # its reconnections are refused
        assert not nc.is_connected

    asyncio.run(scenario())
