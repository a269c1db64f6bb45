"""The testbed's pure parts: delay-proxy routes, the fleet (default and YAML), agent flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_cli.testbed.delay_proxy import Route, RouteError, parse_args
from echo_cli.testbed.fleet import DEFAULT_TESTBED, FleetError, load_fleet, parse_fleet


def test_route_round_trips_through_its_text_form() -> None:
    r = Route.parse("edge-1-mqtt@10.77.3.1:41000=127.0.0.1:1883/40")
    assert r == Route("10.77.3.1", 41000, "127.0.0.1", 1883, 40.0, "edge-1-mqtt")
    assert Route.parse(r.spec()) == r
    assert Route.parse("0.0.0.0:0=localhost:4222/2.5").delay_ms == 2.5


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1:1=127.0.0.1:2", "expected"),
        ("127.0.0.1=127.0.0.1:2/5", "listen address"),
        ("127.0.0.1:1=127.0.0.1:x/5", "upstream address"),
        ("127.0.0.1:1=127.0.0.1:2/fast", "not a number"),
        ("127.0.0.1:1=127.0.0.1:2/-1", "delay_ms must be >= 0"),
        ("127.0.0.1:70000=127.0.0.1:2/1", "listen port must be 0..65535"),
    ],
)
def test_a_bad_route_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(RouteError, match=problem):
        Route.parse(text)


def test_the_proxy_command_line_rejects_a_bad_route(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--route", "nonsense"])
    assert "expected [NAME@]LISTEN_HOST:PORT" in capsys.readouterr().err


def test_default_fleet_isolates_edge_and_fog_and_declares_every_uplink() -> None:
    by_id = {d.device_id: d for d in DEFAULT_TESTBED}
    assert set(by_id) == {"edge-1", "edge-2", "fog-1", "cloud-1"}
    assert by_id["edge-1"].input_streams == ("taxi-feed",)
    assert [d.device_id for d in DEFAULT_TESTBED if d.isolated] == ["edge-1", "edge-2", "fog-1"]
    assert not by_id["edge-1"].reaches_nats and by_id["fog-1"].reaches_nats
    argv = by_id["edge-1"].argv()
    flags = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert flags["--site"] == "edge-a"
    assert flags["--uplink-latency-ms"] == "40" and flags["--uplink-mbps"] == "10"
    assert argv.count("--broker") == 1 and flags["--broker"] == "mqtt"
    cloud = by_id["cloud-1"].argv()
    assert cloud[cloud.index("--uplink-latency-ms") + 1] == "0"
    assert cloud.count("--broker") == 2


def test_fleet_yaml(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(
        "devices:\n"
        "  - {id: e1, tier: edge, latency_ms: 25, mbps: 5, input_streams: [cam], labels: {zone: a}}\n"
        "  - {id: c1, tier: cloud, cpu: 8, memory_mb: 4096}\n"
    )
    e1, c1 = load_fleet(f)
    assert e1.isolated and e1.latency_ms == 25 and e1.mbps == 5 and e1.site == "e1"
    assert e1.brokers == ("mqtt",) and e1.labels == (("zone", "a"),)
    assert not c1.isolated and c1.brokers == ("mqtt", "nats") and c1.cpu == 8


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"devices": [{"id": "e1"}]}, r"devices\[0\]\.tier: Field required"),
        ({"devices": [{"id": "e1", "tier": "edge", "latency_ms": -1}]}, r"devices\[0\]\.latency_ms"),
        ({"devices": [{"id": "e1", "tier": "edge", "mbps": 0}]}, r"devices\[0\]\.mbps"),
        ({"devices": [{"id": "e1", "tier": "edge", "brokers": ["nats"]}]}, "list mqtt"),
        ({"devices": [{"id": "e1", "tier": "edge", "colour": "red"}]}, r"devices\[0\]\.colour"),
        ({"devices": [{"id": "a", "tier": "edge"}, {"id": "a", "tier": "fog"}]}, "appears twice"),
        ({"devices": []}, "devices: List should have at least 1 item"),
        ([1, 2], "top level"),
    ],
)
def test_a_bad_fleet_names_the_field(data: object, problem: str) -> None:
    with pytest.raises(FleetError, match=problem):
        parse_fleet(data, "fleet.yaml")


def test_a_missing_fleet_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=r"cannot read fleet file .*nope\.yaml"):
        load_fleet(tmp_path / "nope.yaml")
