"""Property tests: on random fleets and DAGs with random constraints, every placement of
every strategy honours every hard constraint, or placement fails with a reason."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo_scheduler.channels import RELAY_CPU, RELAY_MEM_MB
from echo_scheduler.placing import place
from echo_shared.errors import PlacementError, SpecError
from echo_shared.models import DataflowSpec, DeviceRecord, DeviceStatus, Placement, PlacementStrategy
from echo_shared.names import Names
from echo_shared.operators import lookup

TIERS = ["edge", "fog", "cloud"]
BROKERS = [["mqtt"], ["nats"], ["mqtt", "nats"], ["mqtt", "nats"], []]
NAMES = Names("p")


@st.composite
def fleets(draw: st.DrawFn) -> list[DeviceRecord]:
    n = draw(st.integers(1, 7))
    out = []
    for i in range(n):
        rec: dict[str, Any] = {
            "id": f"d{i}",
            "tier": draw(st.sampled_from(TIERS)),
            "capacity": {
                "cpu": draw(st.sampled_from([0.2, 0.5, 1, 2])),
                "memory_mb": draw(st.sampled_from([64, 256, 1024])),
            },
            "labels": {"zone": draw(st.sampled_from("xy"))},
            "input_streams": draw(st.lists(st.sampled_from(["cam", "mic"]), max_size=2, unique=True)),
            "runtimes": draw(st.sampled_from([["python"], ["python", "process"], []])),
            "accelerators": {"gpu": draw(st.integers(0, 2))},
            "connectivity": {"brokers": draw(st.sampled_from(BROKERS))},
            "status": draw(st.sampled_from(["online"] * 5 + ["unreachable", "lost"])),
        }
        if draw(st.booleans()):
            rec["uplink"] = {
                "latency_ms": draw(st.floats(0, 100)),
                "bandwidth_mbps": draw(st.sampled_from([0.5, 5, 100])),
            }
        if draw(st.booleans()):
            rec["rtt_ms"] = {"mqtt": draw(st.floats(0, 50)), "nats": draw(st.floats(0, 50))}
        out.append(DeviceRecord.model_validate(rec))
    return out


@st.composite
def dags(draw: st.DrawFn, n_devices: int) -> DataflowSpec:
    n = draw(st.integers(1, 7))
    tasks: list[dict[str, Any]] = []
    edges: list[dict[str, str]] = []
    for k in range(n):
        source = k == 0 or draw(st.integers(0, 4)) == 0
        t: dict[str, Any] = (
            {"id": f"t{k}", "operator": "io.generate", "config": {"count": 1}}
            if source
            else {
                "id": f"t{k}",
                "operator": draw(st.sampled_from(["core.passthrough", "core.passthrough", "python:m.x:Op"])),
            }
        )
        if not source:
            for src in draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=2, unique=True)):
                edges.append({"from": f"t{src}", "to": f"t{k}"})
        c: dict[str, Any] = {}
        roll = draw(st.integers(0, 12))
        if roll == 0:
            c["device"] = f"d{draw(st.integers(0, n_devices))}"
        elif roll == 1:
            c["tier"] = draw(st.lists(st.sampled_from(TIERS), min_size=1, max_size=2, unique=True))
        elif roll == 2:
            c["input_stream"] = draw(st.sampled_from(["cam", "mic"]))
        elif roll == 3:
            c["labels"] = {"zone": draw(st.sampled_from("xy"))}
        elif roll == 4:
            c["accelerators"] = {"gpu": draw(st.integers(1, 2))}
        elif roll == 5 and k > 0:
            c["colocate_with"] = [f"t{draw(st.integers(0, k - 1))}"]
        elif roll == 6 and k > 0:
            c["anti_affinity"] = [f"t{draw(st.integers(0, k - 1))}"]
        t["placement"] = c
        t["resources"] = {
            "cpu": draw(st.sampled_from([0, 0.1, 0.3])),
            "memory_mb": draw(st.sampled_from([0, 32, 200])),
        }
        tasks.append(t)
    return DataflowSpec.model_validate(
        {
            "name": "h",
            "tasks": tasks,
            "edges": edges,
            "placement_strategy": draw(st.sampled_from(list(PlacementStrategy))),
        }
    )


@st.composite
def problems(
    draw: st.DrawFn,
) -> tuple[DataflowSpec, list[DeviceRecord], dict[str, tuple[float, float, dict[str, int]]]]:
    fleet = draw(fleets())
    spec = draw(dags(len(fleet)))
    reserved: dict[str, tuple[float, float, dict[str, int]]] = {}
    for d in fleet:
        if draw(st.integers(0, 3)) == 0:
            reserved[d.id] = (
                draw(st.sampled_from([0.1, 0.5])),
                draw(st.sampled_from([0.0, 100.0])),
                {"gpu": draw(st.integers(0, 1))},
            )
    return spec, fleet, reserved


def check(spec: DataflowSpec, fleet: list[DeviceRecord], reserved: dict[str, Any], p: Placement) -> None:
    devs = {d.id: d for d in fleet}
    where = {t.task: t.device for t in p.tasks}
    assert [t.task for t in p.tasks] == [t.id for t in spec.tasks]
    cpu: dict[str, float] = defaultdict(float)
    mem: dict[str, float] = defaultdict(float)
    gpu: dict[str, int] = defaultdict(int)
    for t, tp in zip(spec.tasks, p.tasks, strict=True):
        d = devs[tp.device]
        c = t.placement
        assert d.status is DeviceStatus.online
        assert tp.reason.startswith(d.id) and "\n" not in tp.reason
        assert c.device is None or c.device == d.id
        assert not c.tiers() or d.tier in c.tiers()
        assert c.input_stream is None or c.input_stream in d.input_streams
        assert all(d.labels.get(k) == v for k, v in c.labels.items())
        info = lookup(t.operator)
        assert info is not None and info.runtime in d.runtimes
        for other in c.colocate_with:
            assert where[other] == d.id
        for other in c.anti_affinity:
            assert where[other] != d.id
        cpu[d.id] += t.resources.cpu
        mem[d.id] += t.resources.memory_mb
        gpu[d.id] += c.accelerators.get("gpu", 0)
    for r in p.relays:
        cpu[r.device] += RELAY_CPU
        mem[r.device] += RELAY_MEM_MB
    for dev_id, d in devs.items():  # what this dataflow takes fits beside what others hold
        res = reserved.get(dev_id, (0.0, 0.0, {}))
        assert not cpu[dev_id] or cpu[dev_id] + res[0] <= d.capacity.cpu + 1e-6
        assert not mem[dev_id] or mem[dev_id] + res[1] <= d.capacity.memory_mb + 1e-6
        assert not gpu[dev_id] or gpu[dev_id] + res[2].get("gpu", 0) <= d.accelerators.get("gpu", 0)
    # channels: each edge directly over a broker both ends reach, or through a relay
    relays = {(r.from_task, r.to_task): r for r in p.relays}
    channels = {(c.from_task, c.to_task): c for c in p.channels}
    assert len(channels) == len(p.channels) == len(spec.edges) + len(relays)
    for e in spec.edges:
        hops = [(e.from_, where[e.from_], e.to, where[e.to])]
        if (e.from_, e.to) in relays:
            r = relays[e.from_, e.to]
            assert devs[r.device].status is DeviceStatus.online and "python" in devs[r.device].runtimes
            hops = [(e.from_, where[e.from_], r.id, r.device), (r.id, r.device, e.to, where[e.to])]
        for fu, a, fv, b in hops:
            ch = channels[fu, fv]
            both = set(devs[a].connectivity.brokers) & set(devs[b].connectivity.brokers)
            assert ch.transport in both and ch.reason
            if "nats" in both:
                assert ch.transport == "nats"
            topic = (
                NAMES.data_subject("df", fu, fv) if ch.transport == "nats" else NAMES.data_topic("df", fu, fv)
            )
            assert ch.topic == topic
    assert p.cost["total"] >= 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_placement_honours_every_hard_constraint_or_fails_with_a_reason(
    case: tuple[DataflowSpec, list[DeviceRecord], dict[str, Any]],
) -> None:
    spec, fleet, reserved = case
    try:
        p = place("df", spec, fleet, reserved, NAMES)
    except SpecError as e:
        assert e.problems and all(x.loc and x.msg for x in e.problems)
        return
    except PlacementError as e:
        msg = str(e)
        assert msg.startswith(("task '", "edge ")), msg
        assert "no device" in msg or "reach" in msg, msg
        return
    check(spec, fleet, reserved, p)
