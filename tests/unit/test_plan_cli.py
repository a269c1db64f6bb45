"""``echoctl plan``: the scheduler's placement offline, run as a real subprocess on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo" / "dataflow.yaml"

DEVICES = [
    {
        "id": "edge-1",
        "tier": "edge",
        "input_streams": ["taxi-feed"],
        "capacity": {"cpu": 1, "memory_mb": 512},
        "uplink": {"latency_ms": 30, "bandwidth_mbps": 5},
    },
    {
        "id": "fog-1",
        "tier": "fog",
        "capacity": {"cpu": 2, "memory_mb": 2048},
        "connectivity": {"brokers": ["mqtt", "nats"]},
    },
    {
        "id": "cloud-1",
        "tier": "cloud",
        "capacity": {"cpu": 4, "memory_mb": 8192},
        "connectivity": {"brokers": ["nats"]},
    },
]


def echoctl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echo_cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def devices(tmp_path: Path) -> Path:
    return write(tmp_path / "devices.yaml", DEVICES)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_json_is_the_placement(devices: Path) -> None:
    proc = echoctl("plan", DEMO, "--devices", devices, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert {t["task"]: t["device"] for t in p["tasks"]} == {
        "gen": "edge-1",
        "count": "fog-1",
        "sink": "cloud-1",
    }
    channels = {(c["from_task"], c["to_task"]): c for c in p["channels"]}
    assert channels["gen", "count"]["transport"] == "mqtt"  # edge-1 reaches only MQTT
    assert channels["count", "sink"]["transport"] == "nats"  # both reach NATS
    assert p["strategy"] == "greedy" and p["cost"]["total"] > 0
    assert all(t["reason"] and t["satisfied"] for t in p["tasks"])


def test_table_shows_tasks_channels_and_relays(tmp_path: Path, devices: Path) -> None:
    spec = yaml.safe_load(DEMO.read_text())
    spec["tasks"][1]["placement"] = {"device": "edge-1"}  # count beside gen: mqtt only
    spec["tasks"][2]["placement"] = {"device": "cloud-1"}  # sink: nats only -> a relay on fog-1
    proc = echoctl("plan", write(tmp_path / "spec.yaml", spec), "--devices", devices)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in (
        "strategy greedy",
        "TASK",
        "DEVICE",
        "gen",
        "edge-1",
        "TRANSPORT",
        "relay-1",
        "fog-1",
        "nats",
    ):
        assert needle in out, out


def test_strategy_option_overrides_the_spec(devices: Path) -> None:
    proc = echoctl("plan", DEMO, "--devices", devices, "--strategy", "round-robin", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["strategy"] == "round-robin"
    proc = echoctl("plan", DEMO, "--devices", devices, "--strategy", "optimal", "-o", "json")
    assert json.loads(proc.stdout)["strategy"] == "optimal"


def test_missing_file_is_a_one_line_error(tmp_path: Path, devices: Path) -> None:
    proc = echoctl("plan", tmp_path / "nope.yaml", "--devices", devices)
    assert proc.returncode == 2
    assert "nope.yaml not found" in one_line_error(proc)
    proc = echoctl("plan", DEMO, "--devices", tmp_path / "none.yaml")
    assert proc.returncode == 2
    assert "devices file" in one_line_error(proc)


def test_invalid_device_record_names_the_field(tmp_path: Path) -> None:
    bad = [*DEVICES[:2], {"id": "cloud-1", "tier": "cloud", "capacity": {"cpu": "lots"}}]
    proc = echoctl("plan", DEMO, "--devices", write(tmp_path / "d.yaml", bad))
    assert proc.returncode == 2
    assert "[2].capacity.cpu" in one_line_error(proc)
    dup = [*DEVICES, DEVICES[0]]
    proc = echoctl("plan", DEMO, "--devices", write(tmp_path / "d2.yaml", dup))
    assert proc.returncode == 2 and "duplicate id 'edge-1'" in one_line_error(proc)
    (tmp_path / "d3.yaml").write_text("[unclosed")
    proc = echoctl("plan", DEMO, "--devices", tmp_path / "d3.yaml")
    assert proc.returncode == 2 and "not valid YAML" in one_line_error(proc)


def test_invalid_spec_is_located(tmp_path: Path, devices: Path) -> None:
    spec = yaml.safe_load(DEMO.read_text())
    spec["tasks"][1]["operator"] = "stats.nope"
    proc = echoctl("plan", write(tmp_path / "s.yaml", spec), "--devices", devices)
    assert proc.returncode == 2
    assert "tasks[1].operator" in one_line_error(proc)
    proc = echoctl("plan", write(tmp_path / "s2.yaml", {"name": "x"}), "--devices", devices)
    assert proc.returncode == 2 and "tasks" in one_line_error(proc)


def test_a_spec_that_cannot_be_placed_says_why(tmp_path: Path, devices: Path) -> None:
    spec = yaml.safe_load(DEMO.read_text())
    spec["tasks"][0]["placement"] = {"input_stream": "camera-7"}
    proc = echoctl("plan", write(tmp_path / "s.yaml", spec), "--devices", devices)
    assert proc.returncode == 1
    assert "no device satisfies input stream camera-7" in one_line_error(proc)
