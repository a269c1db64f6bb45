"""An edge agent cut off from the network for 60 s, in its own network namespace, while its
source produces 500 records/s: when the link comes back, every record reaches the sink
once with its count right, the dataflow completes, and every process is alive.

The partition takes the device's veth down at the bridge: packets go nowhere and no
connection is reset, as when a radio link drops. The edge device is declared lost
meanwhile (it is: nothing hears it); its source cannot move (only it has the input
stream), so it goes on where it is and is heard again when the link returns.

Needs root and network namespaces; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from echo_cli.devstack import Brokers
from echo_cli.testbed.fleet import TestbedDevice
from echo_cli.testbed.runner import Testbed
from tests.chaos.test_broker_outages import outage
from tests.e2e.test_migration import check_exactly_once, read_jsonl
from tests.harness.api import Api
from tests.harness.testbed import running_testbed
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PARTITION_SECONDS = 60.0
RATE = 500.0
DEVICES = (
    TestbedDevice(
        "edge-1",
        "edge",
        input_streams=("taxi-feed",),
        cpu=1.0,
        memory_mb=512,
        site="edge-a",
        latency_ms=5.0,
        brokers=("mqtt",),
    ),
    TestbedDevice("cloud-1", "cloud", cpu=4.0, memory_mb=8192, site="cloud"),
)


@pytest.fixture
def testbed(brokers: Brokers, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Testbed]:
    with running_testbed(brokers, tmp_path / "testbed", DEVICES, request) as tb:
        yield tb


def spec(out: Path, count: int) -> dict[str, Any]:
    return {
        "name": "cut-off-edge",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": count, "rate": RATE, "fields": {"city": "nyc"}},
                "placement": {"input_stream": "taxi-feed"},
            },
            {
                "id": "count",
                "operator": "stats.count_by_key",
                "config": {"key": "city"},
                "placement": {"tier": "cloud"},
            },
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(out)},
                "placement": {"tier": "cloud"},
            },
        ],
        "edges": [{"from": "gen", "to": "count"}, {"from": "count", "to": "sink"}],
    }


@pytest.mark.timeout(300)
def test_an_edge_cut_off_for_a_minute(testbed: Testbed, tmp_path: Path) -> None:
    assert testbed.platform is not None and testbed.network is not None
    api = Api.of(testbed.platform)
    out, total = tmp_path / "out.jsonl", 40_000  # 80 s of records at 500/s: the cut falls inside
    try:
        df_id = api.submit(spec(out, total))
        api.wait_state(df_id, "running", timeout=60)
        wait_until(lambda: len(read_jsonl(out)) >= 1_000, timeout=30, what="records flowing to the sink")
        testbed.network.partition("edge-1")
        try:
            wait_until(
                lambda: api.devices()["edge-1"]["status"] != "online", timeout=30, what="edge-1 missed"
            )
            outage(PARTITION_SECONDS - 3)
            during = len(read_jsonl(out))
        finally:
            testbed.network.partition("edge-1", cut=False)
        wait_until(lambda: api.devices()["edge-1"]["status"] == "online", timeout=60, what="edge-1 back")
        api.wait_state(df_id, "completed", timeout=180)
        check_exactly_once(out, total)
        assert during < total, "the source finished before the partition ended: it proved nothing"
        tasks = {t["id"]: t for t in api.dataflow(df_id)["tasks"]}
        assert tasks["gen"]["device"] == "edge-1"
        for name, p in testbed.children().items():
            assert p.alive(), f"{name} exited: {p.log_tail()}"
    finally:
        api.close()
