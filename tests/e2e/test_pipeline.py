"""A dataflow across three tiers moves every record exactly once, in order."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psutil
import pytest

from tests.conftest import PlatformFactory
from tests.harness.specs import three_tiers
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_generate_passthrough_sink_across_three_tiers(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    _platform, api = platform_factory()
    out = tmp_path / "out.jsonl"
    df_id = api.submit(three_tiers("three-tiers", out, count=10_000))
    df = api.wait_state(df_id, "completed", timeout=60)
    devices = {t["id"]: t["device"] for t in df["tasks"]}
    assert devices == {"gen": "edge-1", "pass": "fog-1", "sink": "cloud-1"}
    tiers = {d["id"]: d["tier"] for d in api.devices().values()}
    assert {tiers[d] for d in devices.values()} == {"edge", "fog", "cloud"}

    records = read_jsonl(out)
    assert [r["seq"] for r in records] == list(range(10_000))
    assert all(r == {"seq": r["seq"]} for r in records)
    by_task = {t["id"]: t for t in df["tasks"]}
    assert by_task["pass"]["records_in"] == 10_000
    assert by_task["sink"]["records_in"] == 10_000


def test_fields_and_count_by_key(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory()
    out = tmp_path / "counts.jsonl"
    df_id = api.submit(
        {
            "name": "counting",
            "tasks": [
                {
                    "id": "gen",
                    "operator": "io.generate",
                    "config": {"count": 300, "fields": {"city": "nyc"}},
                    "placement": {"input_stream": "taxi-feed"},
                },
                {
                    "id": "count",
                    "operator": "stats.count_by_key",
                    "config": {"key": "city"},
                    "placement": {"tier": "fog"},
                },
                {
                    "id": "sink",
                    "operator": "io.file_sink",
                    "config": {"path": str(out)},
                    "placement": {"tier": ["cloud"]},
                },
            ],
            "edges": [{"from": "gen", "to": "count"}, {"from": "count", "to": "sink"}],
        }
    )
    df = api.wait_state(df_id, "completed", timeout=60)
    assert [t["device"] for t in df["tasks"]] == ["edge-1", "fog-1", "cloud-1"]
    assert all(t["placement_reason"] for t in df["tasks"])
    records = wait_until(lambda: len(read_jsonl(out)) == 300 and read_jsonl(out), what="300 counts")
    assert records[-1] == {"key": "nyc", "count": 300, "seq": 299}
    assert [r["count"] for r in records] == list(range(1, 301))


def test_an_agent_runs_its_tasks_over_one_data_connection(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    """Five tasks on edge-1: the agent holds two MQTT connections (control and data), not six,
    and every record arrives once, in order."""
    platform, api = platform_factory()
    out = tmp_path / "out.jsonl"
    chain = ["gen", "p1", "p2", "p3", "sink"]
    spec = three_tiers("one-connection", out, count=20_000, rate=5_000)
    spec["tasks"] = [
        {"id": "gen", "operator": "io.generate", "config": {"count": 20_000, "rate": 5_000}},
        *({"id": t, "operator": "core.passthrough"} for t in chain[1:-1]),
        {"id": "sink", "operator": "io.file_sink", "config": {"path": str(out)}},
    ]
    for t in spec["tasks"]:
        t["placement"] = {"device": "edge-1"}
    spec["edges"] = [{"from": a, "to": b} for a, b in itertools.pairwise(chain)]
    df_id = api.submit(spec)
    api.wait_state(df_id, "running", timeout=30)
    agent = psutil.Process(platform.agents["edge-1"].pid)
    mqtt_port = urlsplit(platform.brokers.mqtt_url).port

    def mqtt_connections() -> int:
        return sum(
            1
            for c in agent.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == mqtt_port and c.status == psutil.CONN_ESTABLISHED
        )

    seen = mqtt_connections()
    df = api.wait_state(df_id, "completed", timeout=60)
    assert seen == 2, f"edge-1 holds {seen} MQTT connections for 5 tasks"
    assert {t["device"] for t in df["tasks"]} == {"edge-1"}
    assert [r["seq"] for r in read_jsonl(out)] == list(range(20_000))
