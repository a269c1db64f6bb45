"""Agents run only what their device allows, on the platform: a ``process`` task is not
placed on a device that does not enable the runtime, an agent refuses a deploy of it that
reaches it anyway (forged, or raced with a restart under other flags), and where the
runtime is enabled the program runs as ``nobody``, under the task's limits, with nothing of
the agent's environment."""

from __future__ import annotations

import asyncio
import os
import pwd
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from echo_agent.runtimes.sandbox import SAFE_PATH
from echo_shared.messages import CommandAck, DeployTask
from echo_shared.mqtt import MqttMessage
from echo_shared.names import Names
from tests.conftest import THREE_TIERS, PlatformFactory
from tests.harness.programs import safe_python3
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

REFUSED = "runtime 'process' is not enabled on device {} (start echo-agent with --runtime process)"
REPORT = (
    "import json, os, sys\n"
    "for line in sys.stdin:\n"
    "    limits = [l for l in open('/proc/self/limits') if l.startswith(('Max address space', 'Max open'))]\n"
    "    print(json.dumps({'seq': json.loads(line)['seq'], 'uid': os.getuid(), 'env': dict(os.environ),"
    " 'limits': limits}), flush=True)\n"
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def pipeline(name: str, device: str, out: Path, memory_mb: int = 32) -> dict[str, Any]:
    return {
        "name": name,
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": 3},
                "placement": {"device": "edge-1"},
            },
            {
                "id": "prog",
                "operator": "process",
                "config": {"command": ["python3", "-c", REPORT]},
                "placement": {"device": device},
                "resources": {"cpu": 0.1, "memory_mb": memory_mb},
            },
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(out)},
                "placement": {"device": "cloud-1"},
            },
        ],
        "edges": [{"from": "gen", "to": "prog"}, {"from": "prog", "to": "sink"}],
    }


def test_a_process_task_is_not_placed_on_a_device_without_the_runtime(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    _platform, api = platform_factory()  # no agent enables the process runtime
    assert not any("process" in d["runtimes"] for d in api.devices().values())
    df_id = api.submit(pipeline("no-process", "fog-1", tmp_path / "out.jsonl"))
    df = api.wait_state(df_id, "failed", timeout=30)
    assert "cannot be placed" in df["reason"] and "runtime process" in df["reason"], df["reason"]
    assert not (tmp_path / "out.jsonl").exists()


def test_an_agent_refuses_a_deploy_of_a_runtime_it_does_not_offer(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, _api = platform_factory()
    names = Names(platform.namespace)
    marker = tmp_path / "pwned"
    forged = DeployTask(
        cmd_id=uuid.uuid4().hex,
        dataflow="evil",
        task="x",
        generation=1,
        operator="process",
        config={"command": ["sh", "-c", f"id > {marker}"]},
    )
    acks: asyncio.Queue[CommandAck] = asyncio.Queue()

    async def forge() -> CommandAck:
        def on(m: MqttMessage) -> None:
            ack = CommandAck.from_bytes(m.payload)
            if ack.cmd_id == forged.cmd_id:
                acks.put_nowait(ack)

        # past placement: straight onto edge-1's command topic (the test's superuser may)
        async with platform.brokers.mqtt_client(f"forger-{uuid.uuid4().hex[:6]}", on_message=on) as c:
            await c.subscribe(names.ack_topic("edge-1"), timeout=10)
            await asyncio.wait_for(c.publish(names.command_topic("edge-1"), forged.to_bytes(), qos=1), 10)
            return await asyncio.wait_for(acks.get(), 20)

    ack = asyncio.run(forge())
    assert (ack.ok, ack.state.value, ack.reason) == (False, "failed", REFUSED.format("edge-1"))
    # refused before anything started: no program ran, no task directory
    assert not marker.exists()
    assert not (platform.workdir / "agents" / "edge-1" / "evil").exists()


def test_a_program_runs_as_nobody_with_its_limits_and_nothing_of_the_agents_environment(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    safe_python3()  # the program below runs on it
    fleet = tuple(replace(s, runtimes=("process",)) if s.device_id == "fog-1" else s for s in THREE_TIERS)
    _platform, api = platform_factory(fleet)
    offered = {d: "process" in r["runtimes"] for d, r in api.devices().items()}
    assert offered == {"edge-1": False, "fog-1": True, "cloud-1": False}

    out = tmp_path / "out.jsonl"
    df_id = api.submit(pipeline("confined", "fog-1", out, memory_mb=300))
    df = api.wait_state(df_id, "completed", timeout=60)
    assert {t["id"]: t["device"] for t in df["tasks"]}["prog"] == "fog-1"
    rows = wait_until(lambda: (r := read_jsonl(out)) and len(r) == 3 and r, what="3 reports")
    expected_uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    for row in rows:
        assert row["uid"] == expected_uid
        env = row["env"]
        # the agents run with the brokers' URLs, the CA, the API, the namespace...: none of it
        assert {k for k in env if k.startswith("ECHO_")} == {
            "ECHO_DATAFLOW",
            "ECHO_TASK",
            "ECHO_DEVICE",
            "ECHO_DATA_DIR",
        }
        assert (env["ECHO_TASK"], env["ECHO_DEVICE"], env["PATH"]) == ("prog", "fog-1", SAFE_PATH)
        assert "PYTHONUNBUFFERED" not in env and "ECHO_UTILISATION" not in env
        limits = {line[:18].strip(): line.split()[3:5] for line in row["limits"]}
        assert limits["Max address space"] == [str(300 << 20)] * 2  # the task's memory_mb
        assert limits["Max open files"] == ["1024", "1024"]
