"""The emulated testbed: an edge agent in its own network namespace, 40 ms from the brokers.

A small testbed (edge-1 behind +40 ms each way and 10 Mbit/s, cloud-1 next to the
brokers) on the session's brokers: the edge agent registers from its namespace, reaches
the broker only through the delay proxy, measures a round trip that reflects the delay,
and a dataflow runs across the namespaces. Its uplink is shaped to 10 Mbit/s, and stopping
the testbed leaves no process, namespace, veth pair or bridge behind.

Needs root and network namespaces; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from echo_cli.devstack import Brokers
from echo_cli.testbed.fleet import TestbedDevice
from echo_cli.testbed.network import STATE_DIR, named_namespace_inode, net_namespace_inode, unavailable_reason
from echo_cli.testbed.runner import Testbed
from tests.conftest import FAST_LIVENESS, unique_namespace
from tests.harness.api import Api
from tests.harness.testbed import running_testbed
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

EDGE_DELAY_MS = 40.0
SMALL_TESTBED = (
    TestbedDevice(
        "edge-1",
        "edge",
        input_streams=("taxi-feed",),
        cpu=1.0,
        memory_mb=512,
        site="edge-a",
        latency_ms=EDGE_DELAY_MS,
        mbps=10.0,
        brokers=("mqtt",),
    ),
    TestbedDevice("cloud-1", "cloud", cpu=4.0, memory_mb=8192, site="cloud"),
)


@pytest.fixture
def testbed(brokers: Brokers, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Testbed]:
    with running_testbed(brokers, tmp_path / "testbed", SMALL_TESTBED, request) as tb:
        yield tb


def read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_edge_agent_in_its_namespace_behind_the_delay(
    testbed: Testbed, brokers: Brokers, tmp_path: Path
) -> None:
    assert testbed.platform is not None and testbed.network is not None
    api = Api.of(testbed.platform)
    try:
        # the edge agent runs in the testbed's namespace, not in ours
        netns = testbed.netns_of("edge-1")
        assert netns is not None
        edge_pid = testbed.platform.agents["edge-1"].pid
        assert net_namespace_inode(edge_pid) == named_namespace_inode(netns)
        assert net_namespace_inode(edge_pid) != net_namespace_inode(os.getpid())

        # from there the broker is reachable only through the proxy
        mqtt = urlsplit(brokers.mqtt_url)
        route = testbed.routes["edge-1"]["mqtt"]
        probe = (
            "import socket, sys; h, p = sys.argv[1], int(sys.argv[2]); socket.create_connection((h, p), 2)"
        )

        def reach(host: str, port: int) -> bool:
            argv = ["ip", "netns", "exec", netns, sys.executable, "-c", probe, host, str(port)]
            return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode == 0

        assert not reach(str(mqtt.hostname), int(mqtt.port or 0)), (
            "the edge namespace reaches the broker directly"
        )
        assert reach(route.listen_host, route.listen_port)

        # it registered with what it declared, and its measured round trip reflects the delay
        def measured() -> dict[str, dict[str, object]] | None:
            devs = api.devices()
            ok = all(
                devs.get(d, {}).get("status") == "online" and devs[d].get("rtt_ms")
                for d in ("edge-1", "cloud-1")
            )
            return devs if ok else None

        devs = wait_until(measured, timeout=20, what="edge-1 and cloud-1 online with a measured RTT")
        edge, cloud = devs["edge-1"], devs["cloud-1"]
        assert edge["site"] == "edge-a" and edge["input_streams"] == ["taxi-feed"]
        assert edge["uplink"] == {"latency_ms": EDGE_DELAY_MS, "bandwidth_mbps": 10.0}
        assert edge["connectivity"]["brokers"] == ["mqtt"]  # type: ignore[index]
        edge_rtt = float(edge["rtt_ms"]["mqtt"])  # type: ignore[index]
        cloud_rtt = float(cloud["rtt_ms"]["mqtt"])  # type: ignore[index]
        assert 2 * EDGE_DELAY_MS <= edge_rtt < 2 * EDGE_DELAY_MS + 150, edge_rtt
        assert cloud_rtt < EDGE_DELAY_MS, cloud_rtt

        # a dataflow across the namespaces: the source on the edge, the rest in the cloud
        out = tmp_path / "out.jsonl"
        df_id = api.submit(
            {
                "name": "across-namespaces",
                "tasks": [
                    {
                        "id": "gen",
                        "operator": "io.generate",
                        "config": {"count": 2000, "fields": {"city": "nyc"}},
                        "placement": {"input_stream": "taxi-feed"},
                    },
                    {"id": "pass", "operator": "core.passthrough", "placement": {"tier": "cloud"}},
                    {
                        "id": "sink",
                        "operator": "io.file_sink",
                        "config": {"path": str(out)},
                        "placement": {"tier": "cloud"},
                    },
                ],
                "edges": [{"from": "gen", "to": "pass"}, {"from": "pass", "to": "sink"}],
            }
        )
        df = api.wait_state(df_id, "completed", timeout=60)
        assert {t["id"]: t["device"] for t in df["tasks"]} == {
            "gen": "edge-1",
            "pass": "cloud-1",
            "sink": "cloud-1",
        }
        records = read_jsonl(out)
        assert [r["seq"] for r in records] == list(range(2000))
        assert all(r["city"] == "nyc" for r in records)
    finally:
        api.close()


def upload_rate_mbps(netns: str, host: str, nbytes: int) -> float:
    """Send ``nbytes`` from inside ``netns`` to a server here; the rate the server received at."""
    with socket.create_server((host, 0)) as srv:
        srv.settimeout(30)
        port = srv.getsockname()[1]
        client = (
            "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10); "
            "s.sendall(b'x' * int(sys.argv[3])); s.shutdown(socket.SHUT_WR); s.recv(1)"
        )
        argv = ["ip", "netns", "exec", netns, sys.executable, "-c", client, host, str(port), str(nbytes)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(30)
                got, first, last = 0, 0.0, 0.0
                while chunk := conn.recv(65536):
                    last = time.perf_counter()
                    first = first or last
                    got += len(chunk)
        finally:
            _, err = proc.communicate(timeout=30)
        assert got == nbytes, err
    return got * 8 / (last - first) / 1e6


def test_uplink_is_shaped_and_stop_removes_everything(brokers: Brokers, tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tb = Testbed(
        brokers, tmp_path / "testbed", SMALL_TESTBED, namespace=unique_namespace(), extra_env=FAST_LIVENESS
    )
    tb.start(timeout=60)
    assert tb.network is not None
    net = tb.network
    netns = tb.netns_of("edge-1")
    links = [net.bridge, *(a.host_if for a in net.attached.values())]
    assert netns is not None and Path("/run/netns", netns).exists()
    assert all(Path("/sys/class/net", link).exists() for link in links)
    assert net.state_file.exists()
    procs = list(tb.children().values())

    # 10 Mbit/s out of the edge namespace (tbf): 2.5 MB take about 2 s, not milliseconds
    assert net.attached["edge-1"].shaped, net.shaping_problem
    rate = upload_rate_mbps(netns, net.host_address, 2_500_000)
    assert 5.0 < rate < 12.0, f"edge-1 uploaded at {rate:.1f} Mbit/s through a 10 Mbit/s tbf"

    codes = tb.stop()

    assert tb.cleanup_problems == []
    assert all(c in (0, None) for c in codes.values()), codes
    assert not any(p.alive() for p in procs)
    assert not Path("/run/netns", netns).exists()
    gone = lambda: not any(Path("/sys/class/net", link).exists() for link in links)  # noqa: E731
    wait_until(gone, timeout=10, what=f"{links} removed")  # a veth's host end goes with its namespace
    assert not net.state_file.exists()
    assert not any(p.name.startswith(net.tag) for p in STATE_DIR.glob("*.json"))
    assert tb.stop() == codes  # idempotent
