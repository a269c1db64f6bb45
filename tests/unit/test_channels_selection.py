"""Channel and relay selection: NATS when both ends reach it, else MQTT, else a relay,
else a RouteError that names the edge and why."""

from __future__ import annotations

import random
from typing import Any

import pytest

from echo_scheduler.errors import RouteError
from echo_scheduler.placing import place, route_problems
from echo_shared.models import DataflowSpec, DeviceRecord, Placement
from echo_shared.names import Names
from echo_shared.placement_graph import effective_spec


def dev(i: str, brokers: list[str], tier: str = "cloud", **kw: Any) -> DeviceRecord:
    kw.setdefault("capacity", {"cpu": 2.0, "memory_mb": 2048})
    return DeviceRecord.model_validate(
        {"id": i, "tier": tier, "runtimes": ["python"], "connectivity": {"brokers": brokers}, **kw}
    )


def pipe(src: str, dst: str, **hints: Any) -> DataflowSpec:
    return DataflowSpec.model_validate(
        {
            "name": "p",
            "tasks": [
                {
                    "id": "gen",
                    "operator": "io.generate",
                    "config": {"count": 1},
                    "placement": {"device": src},
                    "hints": hints,
                },
                {
                    "id": "sink",
                    "operator": "io.file_sink",
                    "config": {"path": "x"},
                    "placement": {"device": dst},
                },
            ],
            "edges": [{"from": "gen", "to": "sink"}],
        }
    )


def test_nats_when_both_reach_it() -> None:
    fleet = [dev("a", ["mqtt", "nats"]), dev("b", ["nats"])]
    p = place("df-1", pipe("a", "b"), fleet, names=Names("ns"))
    (ch,) = p.channels
    assert (ch.transport, ch.topic) == ("nats", "ns.df.df-1.gen.sink")
    assert "both reach NATS" in ch.reason
    assert not p.relays


def test_mqtt_when_they_share_only_mqtt() -> None:
    fleet = [dev("a", ["mqtt"]), dev("b", ["mqtt", "nats"])]
    (ch,) = place("df-1", pipe("a", "b"), fleet, names=Names("ns")).channels
    assert (ch.transport, ch.topic) == ("mqtt", "ns/df/df-1/gen/sink")
    assert "share the MQTT broker" in ch.reason and "b alone reaches NATS" in ch.reason


def test_same_device_channel() -> None:
    (ch,) = place("df", pipe("a", "a"), [dev("a", ["mqtt"])]).channels
    assert ch.transport == "mqtt" and "same device" in ch.reason


def test_devices_that_declare_nothing_use_mqtt() -> None:
    fleet = [
        DeviceRecord.model_validate({"id": i, "tier": "cloud", "capacity": {}, "runtimes": ["python"]})
        for i in ("a", "b")
    ]
    (ch,) = place("df", pipe("a", "b"), fleet).channels
    assert ch.transport == "mqtt"


def test_relay_when_no_broker_is_shared() -> None:
    fleet = [
        dev("edge-1", ["mqtt"], "edge"),
        dev("cloud-1", ["nats"]),
        dev("fog-slow", ["mqtt", "nats"], "fog", uplink={"latency_ms": 30, "bandwidth_mbps": 10}),
        dev("fog-fast", ["mqtt", "nats"], "fog", uplink={"latency_ms": 2, "bandwidth_mbps": 100}),
    ]
    s = pipe("edge-1", "cloud-1")
    p = place("df-1", s, fleet, names=Names("ns"))
    (relay,) = p.relays
    assert relay.id == "relay-0" and relay.device == "fog-fast"  # the cheapest of the two
    assert (relay.from_task, relay.to_task) == ("gen", "sink")
    assert "reaches both" in relay.reason
    legs = {(c.from_task, c.to_task): c for c in p.channels}
    assert set(legs) == {("gen", "relay-0"), ("relay-0", "sink")}
    assert legs["gen", "relay-0"].transport == "mqtt"
    assert legs["gen", "relay-0"].topic == "ns/df/df-1/gen/relay-0"
    assert legs["relay-0", "sink"].transport == "nats"
    assert legs["relay-0", "sink"].topic == "ns.df.df-1.relay-0.sink"
    assert all(c.reason for c in p.channels)
    # the master deploys the spec with the relay in the edge
    eff = effective_spec(s, p)
    assert [(e.from_, e.to) for e in eff.edges] == [("gen", "relay-0"), ("relay-0", "sink")]
    # the relay's hop is part of the latency
    direct = place("df-1", s, [*fleet[:1], dev("cloud-1", ["mqtt"]), *fleet[2:]])
    assert p.cost["latency_ms"] > direct.cost["latency_ms"]


def test_relay_choice_does_not_depend_on_device_order() -> None:
    fleet = [dev("e", ["mqtt"], "edge"), dev("c", ["nats"])] + [
        dev(f"r{i}", ["mqtt", "nats"], "fog") for i in range(5)
    ]
    first = place("df", pipe("e", "c"), fleet)
    assert first.relays[0].device == "r0"  # equal costs: lowest id
    for seed in range(5):
        shuffled = fleet[:]
        random.Random(seed).shuffle(shuffled)
        assert place("df", pipe("e", "c"), shuffled) == first


def test_relay_reserves_room_on_its_device() -> None:
    full = {"cpu": 0.06, "memory_mb": 40}
    fleet = [dev("e", ["mqtt"], "edge"), dev("c", ["nats"]), dev("r", ["mqtt", "nats"], "fog", capacity=full)]
    s = DataflowSpec.model_validate(
        {
            "name": "two",
            "tasks": [
                {"id": "g", "operator": "io.generate", "config": {"count": 1}, "placement": {"device": "e"}},
                {
                    "id": "s1",
                    "operator": "io.file_sink",
                    "config": {"path": "x"},
                    "placement": {"device": "c"},
                },
                {
                    "id": "s2",
                    "operator": "io.file_sink",
                    "config": {"path": "x"},
                    "placement": {"device": "c"},
                },
            ],
            "edges": [{"from": "g", "to": "s1"}, {"from": "g", "to": "s2"}],
        }
    )
    with pytest.raises(RouteError, match=r"room for a relay|0\.05 CPU and 32 MiB free") as err:
        place("df", s, fleet)
    assert err.value.edge == 1  # the first relay fits, the second does not


def test_no_route_names_the_edge_and_why() -> None:
    fleet = [dev("edge-1", ["mqtt"], "edge"), dev("cloud-1", ["nats"])]
    with pytest.raises(RouteError) as err:
        place("df", pipe("edge-1", "cloud-1"), fleet)
    assert str(err.value) == (
        "edge gen→sink (edges[0]): edge-1 reaches only mqtt, cloud-1 only nats, "
        "and no online device reaches both"
    )
    assert err.value.edge == 0 and err.value.pinned and err.value.loc == "edges[0]"
    # the same check, dry, as the validator runs it
    (dry,) = route_problems(pipe("edge-1", "cloud-1"), fleet)
    assert str(dry) == str(err.value)
    # an offline device that reaches both does not help
    offline = dev("fog-1", ["mqtt", "nats"], "fog", status="unreachable")
    with pytest.raises(RouteError):
        place("df", pipe("edge-1", "cloud-1"), [*fleet, offline])


def test_unpinned_tasks_avoid_devices_they_cannot_reach() -> None:
    fleet = [
        dev("edge-1", ["mqtt"], "edge"),
        dev("cloud-n", ["nats"]),
        dev("cloud-m", ["mqtt"], capacity={"cpu": 1}),
    ]
    s = DataflowSpec.model_validate(
        {
            "name": "p",
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
                    "config": {"path": "x"},
                    "placement": {"tier": "cloud"},
                },
            ],
            "edges": [{"from": "gen", "to": "sink"}],
        }
    )
    p = place("df", s, fleet)
    assert p.device_of("sink") == "cloud-m" and not p.relays
    assert route_problems(s, fleet) == []  # some device can be reached: not a spec problem


def test_a_device_without_brokers_cannot_join_an_edge() -> None:
    fleet = [dev("a", []), dev("b", ["mqtt"])]
    with pytest.raises(RouteError, match="a reaches no broker"):
        place("df", pipe("a", "b"), fleet)


def test_every_edge_has_a_channel_or_two_legs() -> None:
    fleet = [dev("e", ["mqtt"], "edge"), dev("c", ["nats"]), dev("f", ["mqtt", "nats"], "fog")]
    s = DataflowSpec.model_validate(
        {
            "name": "fan",
            "tasks": [
                {"id": "g", "operator": "io.generate", "config": {"count": 1}, "placement": {"device": "e"}},
                {"id": "p", "operator": "core.passthrough", "placement": {"device": "c"}},
                {"id": "q", "operator": "core.passthrough", "placement": {"device": "f"}},
                {
                    "id": "s",
                    "operator": "io.file_sink",
                    "config": {"path": "x"},
                    "placement": {"device": "e"},
                },
            ],
            "edges": [
                {"from": "g", "to": "p"},
                {"from": "g", "to": "q"},
                {"from": "p", "to": "s"},
                {"from": "q", "to": "s"},
            ],
        }
    )
    p: Placement = place("df", s, fleet)
    relayed = {(r.from_task, r.to_task) for r in p.relays}
    assert relayed == {("g", "p"), ("p", "s")}
    assert {r.id for r in p.relays} == {"relay-0", "relay-2"}
    assert len(p.channels) == len(s.edges) + len(relayed)
