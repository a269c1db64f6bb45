"""An edge agent cut off from the network, in its own network namespace, while its source
produces 500 records/s. The edge is autonomous: its source goes on producing into the
channel's on-disk spool while the broker is out of reach, and when the link comes back
every record reaches the sink once with its count right, the dataflow completes, and
every process is alive. Three cases:

- a 60 s partition: everything delivered once after the heal, and the source did not
  stop meanwhile (its edge reports what it spooled);
- a spool of 64 KiB with ``drop_oldest``: the sink gets exactly what was not dropped,
  once each, and the edge reports exactly how many records were dropped;
- the agent killed (-9) while cut off and started again, still cut off: it resumes its
  task from its local checkpoint and spool without the master; after the heal every
  record is delivered once.

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


def spec(out: Path, count: int, spool: dict[str, Any] | None = None) -> dict[str, Any]:
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
        "edges": [
            {"from": "gen", "to": "count", **({"spool": spool} if spool else {})},
            {"from": "count", "to": "sink"},
        ],
    }


def edge(api: Api, df_id: str) -> dict[str, Any]:
    """The view of the edge gen -> count (what the source's copy sent, spooled, dropped)."""
    return next(e for e in api.dataflow(df_id)["edges"] if e["from"] == "gen")


def cut_off(testbed: Testbed, api: Api, seconds: float, during: Any = None) -> None:
    """Partition edge-1 for ``seconds`` (``during()`` runs once it is missed) and heal it."""
    assert testbed.network is not None
    testbed.network.partition("edge-1")
    try:
        wait_until(lambda: api.devices()["edge-1"]["status"] != "online", timeout=30, what="edge-1 missed")
        if during is not None:
            during()
        outage(seconds - 3)
    finally:
        testbed.network.partition("edge-1", cut=False)
    wait_until(lambda: api.devices()["edge-1"]["status"] == "online", timeout=60, what="edge-1 back")


def all_alive(testbed: Testbed) -> None:
    for name, p in testbed.children().items():
        assert p.alive(), f"{name} exited: {p.log_tail()}"


@pytest.mark.timeout(300)
def test_an_edge_cut_off_for_a_minute(testbed: Testbed, tmp_path: Path) -> None:
    assert testbed.platform is not None and testbed.network is not None
    api = Api.of(testbed.platform)
    out, total = tmp_path / "out.jsonl", 40_000  # 80 s of records at 500/s: the cut falls inside
    try:
        df_id = api.submit(spec(out, total))
        api.wait_state(df_id, "running", timeout=60)
        wait_until(lambda: len(read_jsonl(out)) >= 1_000, timeout=30, what="records flowing to the sink")
        during: list[int] = []
        cut_off(testbed, api, PARTITION_SECONDS, lambda: during.append(len(read_jsonl(out))))
        # the source went on while cut off: its edge says what it spooled (reported once back)
        spooled = wait_until(lambda: edge(api, df_id)["spooled"], timeout=60, what="the spool reported")
        api.wait_state(df_id, "completed", timeout=180)
        check_exactly_once(out, total)
        assert during[0] < total, "the source finished before the partition ended: it proved nothing"
        assert spooled >= 0.5 * RATE * (PARTITION_SECONDS - 30), f"only {spooled} messages spooled"
        view = edge(api, df_id)
        assert view["dropped"] == 0 and view["spool_bytes"] == 0, view
        tasks = {t["id"]: t for t in api.dataflow(df_id)["tasks"]}
        assert tasks["gen"]["device"] == "edge-1"
        all_alive(testbed)
    finally:
        api.close()


@pytest.mark.timeout(300)
def test_a_tiny_spool_drops_exactly_what_it_reports(testbed: Testbed, tmp_path: Path) -> None:
    assert testbed.platform is not None
    api = Api.of(testbed.platform)
    out, total = tmp_path / "out.jsonl", 20_000
    try:
        df_id = api.submit(spec(out, total, spool={"max_bytes": 65536, "overflow": "drop_oldest"}))
        api.wait_state(df_id, "running", timeout=60)
        wait_until(lambda: len(read_jsonl(out)) >= 1_000, timeout=30, what="records flowing to the sink")
        cut_off(testbed, api, 20.0)
        api.wait_state(df_id, "completed", timeout=180)
        dropped = edge(api, df_id)["dropped"]
        lines = read_jsonl(out)
        seqs = [r["seq"] for r in lines]
        assert len(seqs) == len(set(seqs)), f"{len(seqs) - len(set(seqs))} duplicated"
        assert dropped > 0, "64 KiB held the whole partition: it proved nothing"
        assert len(seqs) == total - dropped, f"{total - len(seqs)} missing, {dropped} reported dropped"
        assert sorted(r["count"] for r in lines) == list(range(1, len(lines) + 1)), "counts wrong"
        all_alive(testbed)
    finally:
        api.close()


@pytest.mark.timeout(300)
def test_an_agent_killed_while_cut_off_resumes_on_its_own(testbed: Testbed, tmp_path: Path) -> None:
    assert testbed.platform is not None
    platform = testbed.platform
    api = Api.of(platform)
    out, total = tmp_path / "out.jsonl", 20_000
    edge_spec = DEVICES[0]

    def kill_and_restart() -> None:
        # let it spool for a while, then kill it and start it again, still cut off
        outage(10.0)
        platform.agents["edge-1"].kill()
        platform.start_agent(edge_spec)
        log = platform.logs / "agent-edge-1.log"
        wait_until(
            lambda: "resumed from its checkpoint" in log.read_text(errors="replace"),
            timeout=30,
            what="edge-1 resumed its task offline",
        )

    try:
        df_id = api.submit(spec(out, total))
        api.wait_state(df_id, "running", timeout=60)
        wait_until(lambda: len(read_jsonl(out)) >= 1_000, timeout=30, what="records flowing to the sink")
        cut_off(testbed, api, 30.0, kill_and_restart)
        api.wait_state(df_id, "completed", timeout=180)
        check_exactly_once(out, total)
        tasks = {t["id"]: t for t in api.dataflow(df_id)["tasks"]}
        assert tasks["gen"]["device"] == "edge-1"
        all_alive(testbed)
    finally:
        api.close()
