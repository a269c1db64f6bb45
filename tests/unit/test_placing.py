"""Placement: hard constraints, determinism, reasons, and failures that say why."""

from __future__ import annotations

import random
from typing import Any

import pytest

from echo_scheduler.placing import place
from echo_shared.errors import PlacementError
from echo_shared.models import Capacity, DataflowSpec, DeviceRecord, DeviceStatus, Tier


def dev(
    i: str,
    tier: str = "edge",
    cpu: float = 1.0,
    mem: int = 1024,
    status: str = "online",
    streams: tuple[str, ...] = (),
    **labels: str,
) -> DeviceRecord:
    return DeviceRecord(
        id=i,
        tier=Tier(tier),
        capacity=Capacity(cpu=cpu, memory_mb=mem),
        labels=labels,
        input_streams=list(streams),
        runtimes=["python"],
        status=DeviceStatus(status),
    )


FLEET = [
    dev("edge-1", "edge", streams=("taxi-feed",), site="a"),
    dev("edge-2", "edge", site="b"),
    dev("fog-1", "fog", cpu=2, mem=2048),
    dev("cloud-1", "cloud", cpu=8, mem=8192),
]


def spec(*tasks: dict[str, Any], edges: tuple[tuple[str, str], ...] = ()) -> DataflowSpec:
    return DataflowSpec.model_validate(
        {"name": "t", "tasks": list(tasks), "edges": [{"from": a, "to": b} for a, b in edges]}
    )


def gen(tid: str = "gen", **placement: Any) -> dict[str, Any]:
    return {"id": tid, "operator": "io.generate", "config": {"count": 1}, "placement": placement}


def sink(tid: str = "sink", **placement: Any) -> dict[str, Any]:
    return {"id": tid, "operator": "io.file_sink", "config": {"path": "x"}, "placement": placement}


def test_each_constraint_is_honoured() -> None:
    s = spec(
        gen("g1", input_stream="taxi-feed"),
        gen("g2", labels={"site": "b"}),
        gen("g3", device="fog-1"),
        gen("g4", tier=["cloud"]),
    )
    got = {t.task: t.device for t in place("df", s, FLEET).tasks}
    assert got == {"g1": "edge-1", "g2": "edge-2", "g3": "fog-1", "g4": "cloud-1"}


def test_same_input_same_placement_whatever_the_device_order() -> None:
    s = spec(gen(), {"id": "a", "operator": "core.passthrough"}, sink(), edges=(("gen", "a"), ("a", "sink")))
    first = place("df", s, FLEET)
    for seed in range(5):
        shuffled = FLEET[:]
        random.Random(seed).shuffle(shuffled)
        assert place("df", s, shuffled) == first


def test_every_task_gets_a_one_line_reason_and_every_edge_a_channel() -> None:
    s = spec(gen(input_stream="taxi-feed"), sink(tier="cloud"), edges=(("gen", "sink"),))
    p = place("df-1", s, FLEET)
    for t in p.tasks:
        assert t.reason and "\n" not in t.reason and t.reason.startswith(t.device)
    assert "input stream taxi-feed" in p.tasks[0].reason
    (ch,) = p.channels
    assert (ch.from_task, ch.to_task, ch.transport) == ("gen", "sink", "mqtt")
    assert ch.topic.endswith("/df-1/gen/sink")


def test_offline_devices_are_never_chosen() -> None:
    fleet = [dev("a", status="unreachable"), dev("b", status="lost"), dev("c")]
    assert place("df", spec(gen()), fleet).tasks[0].device == "c"


def test_capacity_is_respected_including_reservations() -> None:
    big = {"id": "g", "operator": "io.generate", "config": {"count": 1}, "resources": {"cpu": 0.8}}
    fleet = [dev("a", cpu=1.0), dev("b", cpu=1.0)]
    assert place("df", spec(big), fleet, reserved={"a": (0.5, 0)}).tasks[0].device == "b"
    with pytest.raises(PlacementError, match=r"0\.8 CPU free"):
        place("df", spec(big), fleet, reserved={"a": (0.5, 0), "b": (0.5, 0)})


def test_tasks_of_one_dataflow_share_capacity() -> None:
    t = {"operator": "io.generate", "config": {"count": 1}, "resources": {"cpu": 0.6}}
    p = place("df", spec({"id": "x", **t}, {"id": "y", **t}), [dev("a"), dev("b")])
    assert {x.device for x in p.tasks} == {"a", "b"}


@pytest.mark.parametrize(
    ("placement", "needle"),
    [
        ({"device": "nope"}, "device nope"),
        ({"tier": "fog", "labels": {"site": "a"}}, "label site=a among those with"),
        ({"input_stream": "camera"}, "input stream camera"),
    ],
)
def test_unplaceable_tasks_say_why(placement: dict[str, Any], needle: str) -> None:
    with pytest.raises(PlacementError, match=needle):
        place("df", spec(gen(**placement)), FLEET)


def test_no_devices_at_all() -> None:
    with pytest.raises(PlacementError, match="no devices are registered"):
        place("df", spec(gen()), [])


def test_downstream_prefers_its_upstream_device() -> None:
    """At equal cost a downstream task joins its upstream task's device."""
    fleet = [*FLEET, dev("cloud-0", "cloud", cpu=8, mem=8192)]
    s = spec(gen(device="cloud-1"), {"id": "a", "operator": "core.passthrough"}, edges=(("gen", "a"),))
    p = place("df", s, fleet)
    assert p.device_of("a") == "cloud-1"  # not cloud-0, equally good and first by id
    assert "co-located" in p.tasks[1].reason


def test_downstream_goes_where_its_channel_is_fastest() -> None:
    """Every channel crosses the broker: a fog task's consumer is cheaper in the cloud
    (1 ms to the broker) than next to it on the fog node (5 ms)."""
    s = spec(gen(device="fog-1"), {"id": "a", "operator": "core.passthrough"}, edges=(("gen", "a"),))
    p = place("df", s, FLEET)
    assert p.device_of("a") == "cloud-1"
    a = p.tasks[1]
    assert a.runner_up == "fog-1" and "more" in a.runner_up_reason
