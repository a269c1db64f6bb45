"""An edge device that reaches only MQTT feeds a cloud device that reaches only NATS:
the scheduler puts a relay on a device reaching both, and the records arrive."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from echo_cli.devstack.platform import AgentSpec
from tests.conftest import PlatformFactory

pytestmark = pytest.mark.e2e

FLEET = (
    AgentSpec("edge-1", "edge", brokers=("mqtt",)),
    AgentSpec("fog-1", "fog", brokers=("mqtt", "nats")),
    AgentSpec("cloud-1", "cloud", brokers=("nats",)),
)


def test_an_edge_crosses_brokers_through_a_relay(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory(FLEET)
    out = tmp_path / "out.jsonl"
    df_id = api.submit(
        {
            "name": "relayed",
            "tasks": [
                {
                    "id": "gen",
                    "operator": "io.generate",
                    "config": {"count": 2000},
                    "placement": {"device": "edge-1"},
                },
                {
                    "id": "sink",
                    "operator": "io.file_sink",
                    "config": {"path": str(out)},
                    "placement": {"device": "cloud-1"},
                },
            ],
            "edges": [{"from": "gen", "to": "sink"}],
        }
    )
    df = api.wait_state(df_id, "completed", timeout=60)
    assert [orjson.loads(x)["seq"] for x in out.read_bytes().splitlines()] == list(range(2000))

    placement = api.http.get(f"/api/v1/dataflows/{df_id}/placement").json()
    (relay,) = placement["relays"]
    assert relay["device"] == "fog-1" and relay["from_task"] == "gen" and relay["to_task"] == "sink"
    assert relay["reason"]
    legs = {(c["from_task"], c["to_task"]): c for c in placement["channels"]}
    assert legs[("gen", relay["id"])]["transport"] == "mqtt"
    assert legs[(relay["id"], "sink")]["transport"] == "nats"
    assert all(c["reason"] for c in placement["channels"])
    # the relay is a task of the deployed dataflow, on fog-1
    tasks = {t["id"]: t for t in df["tasks"]}
    assert tasks[relay["id"]]["device"] == "fog-1" and tasks[relay["id"]]["operator"] == "core.relay"


def test_no_route_is_a_422_naming_the_edge(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory((FLEET[0], FLEET[2]))  # nobody reaches both brokers
    r = api.http.post(
        "/api/v1/dataflows",
        json={
            "name": "stranded",
            "tasks": [
                {
                    "id": "gen",
                    "operator": "io.generate",
                    "config": {"count": 1},
                    "placement": {"device": "edge-1"},
                },
                {
                    "id": "sink",
                    "operator": "io.file_sink",
                    "config": {"path": str(tmp_path / "x")},
                    "placement": {"device": "cloud-1"},
                },
            ],
            "edges": [{"from": "gen", "to": "sink"}],
        },
    )
    assert r.status_code == 422, r.text
    (problem,) = [e for e in r.json()["errors"] if e["loc"].startswith("edges[0]")]
    assert "edge-1" in problem["msg"] and "cloud-1" in problem["msg"]
