"""Strategies: round-robin (the original baseline), greedy (default), optimal (ILP)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from echo_scheduler import optimal
from echo_scheduler.errors import RouteError
from echo_scheduler.outcome import assess
from echo_scheduler.placing import place
from echo_scheduler.problem import build
from echo_scheduler.solution import Solution, assign
from echo_shared.models import DataflowSpec, DeviceRecord, PlacementStrategy

S = PlacementStrategy


def dev(i: str, tier: str = "cloud", **kw: Any) -> DeviceRecord:
    kw.setdefault("capacity", {"cpu": 4.0, "memory_mb": 4096})
    return DeviceRecord.model_validate({"id": i, "tier": tier, "runtimes": ["python"], **kw})


def chain(n: int, **first: Any) -> DataflowSpec:
    tasks: list[dict[str, Any]] = [{"id": "t0", "operator": "io.generate", "config": {"count": 1}, **first}]
    tasks += [{"id": f"t{i}", "operator": "core.passthrough"} for i in range(1, n)]
    edges = [{"from": f"t{i - 1}", "to": f"t{i}"} for i in range(1, n)]
    return DataflowSpec.model_validate({"name": "chain", "tasks": tasks, "edges": edges})


def random_instance(seed: int) -> tuple[DataflowSpec, list[DeviceRecord]]:
    rng = random.Random(seed)
    devices = []
    for i in range(rng.randint(3, 6)):
        rec: dict[str, Any] = {
            "capacity": {"cpu": rng.choice([0.5, 1, 2]), "memory_mb": 2048},
            "connectivity": {"brokers": rng.choice([["mqtt"], ["nats"], ["mqtt", "nats"], ["mqtt", "nats"]])},
        }
        if rng.random() < 0.7:
            rec["uplink"] = {
                "latency_ms": rng.uniform(1, 40),
                "bandwidth_mbps": rng.choice([0.5, 2, 10, 100]),
            }
        devices.append(dev(f"d{i}", rng.choice(["edge", "fog", "cloud"]), **rec))
    devices.append(dev("hub", "fog", connectivity={"brokers": ["mqtt", "nats"]}))
    n = rng.randint(3, 7)
    tasks: list[dict[str, Any]] = [
        {
            "id": "t0",
            "operator": "io.generate",
            "config": {"count": 1},
            "placement": {"device": "d0"},
            "hints": {"rate": rng.choice([10, 100, 1000]), "record_bytes": rng.choice([100, 1000])},
        }
    ]
    edges = []
    for k in range(1, n):
        tasks.append(
            {"id": f"t{k}", "operator": "core.passthrough", "resources": {"cpu": rng.choice([0.1, 0.4])}}
        )
        edges.append({"from": f"t{rng.randrange(k)}", "to": f"t{k}"})
    return DataflowSpec.model_validate({"name": "r", "tasks": tasks, "edges": edges}), devices


# ---------------------------------------------------------------------------- round-robin


def test_round_robin_takes_devices_in_turn_and_keeps_pins() -> None:
    fleet = [dev("a"), dev("b"), dev("c", input_streams=["cam"])]
    s = DataflowSpec.model_validate(
        {
            **chain(5, placement={"input_stream": "cam"}).model_dump(by_alias=True),
            "placement_strategy": "round-robin",
        }
    )
    p = place("df", s, fleet)
    assert p.strategy == "round-robin"
    assert [t.device for t in p.tasks] == ["c", "a", "b", "c", "a"]
    assert "pinned" in p.tasks[0].reason or "input stream cam" in p.tasks[0].reason
    assert "next in round-robin order" in p.tasks[1].reason
    assert p.tasks[1].runner_up == "b"


def test_round_robin_still_honours_hard_constraints() -> None:
    fleet = [dev("a", "edge"), dev("b", "cloud"), dev("c", "edge", capacity={"cpu": 0.1, "memory_mb": 64})]
    base = chain(4).model_dump(by_alias=True)
    for t in base["tasks"][1:]:
        t["placement"]["tier"] = ["edge"]
    s = DataflowSpec.model_validate(base)
    p = place("df", s, fleet, strategy=S.round_robin)
    got = [t.device for t in p.tasks]
    assert got[0] == "a" and all(d in {"a", "c"} for d in got[1:])
    assert got.count("c") == 1  # room for one 0.1 CPU task only


# ---------------------------------------------------------------------------- greedy


def test_greedy_is_the_default_and_prefers_fast_uplinks() -> None:
    fleet = [
        dev("slow", "edge", uplink={"latency_ms": 40, "bandwidth_mbps": 10}),
        dev("fast", "fog", uplink={"latency_ms": 2, "bandwidth_mbps": 100}),
    ]
    p = place("df", chain(3, placement={"device": "slow"}), fleet)
    assert p.strategy == "greedy"
    assert [t.device for t in p.tasks] == ["slow", "fast", "fast"]
    assert p.tasks[1].runner_up == "slow" and "more" in p.tasks[1].runner_up_reason
    assert set(p.cost) == {"latency_ms", "transfer", "load", "total"}
    assert p.cost["total"] == pytest.approx(
        p.cost["latency_ms"] + p.cost["transfer"] + p.cost["load"], abs=1e-5
    )
    assert {"finish_ms", "channel_ms", "uplink_util", "device_load"} <= set(p.tasks[1].costs)


def test_observed_rates_replace_the_hints() -> None:
    fleet = [
        dev("near", uplink={"latency_ms": 2, "bandwidth_mbps": 1}),
        dev("far", uplink={"latency_ms": 10, "bandwidth_mbps": 1000}),
        dev("home", uplink={"latency_ms": 1, "bandwidth_mbps": 1000}, capacity={"cpu": 0.1, "memory_mb": 32}),
    ]
    s = chain(2, placement={"device": "home"})
    assert place("df", s, fleet).device_of("t1") == "near"  # 100 records/s: the thin uplink copes
    busy = place("df", s, fleet, rates={"t0": 2000.0})  # 2,000 records/s x 256 B: it would not
    assert busy.device_of("t1") == "far"
    hinted = DataflowSpec.model_validate(
        {
            **s.model_dump(by_alias=True),
            "tasks": [{**s.tasks[0].model_dump(), "hints": {"rate": 2000}}, s.tasks[1].model_dump()],
        }
    )
    assert place("df", hinted, fleet).device_of("t1") == "far"


def test_load_spreads_tasks_that_latency_does_not_decide() -> None:
    fleet = [
        dev("a", capacity={"cpu": 1, "memory_mb": 4096}),
        dev("b", capacity={"cpu": 1, "memory_mb": 4096}),
    ]
    tasks = [
        {"id": f"g{i}", "operator": "io.generate", "config": {"count": 1}, "resources": {"cpu": 0.3}}
        for i in range(4)
    ]
    p = place("df", DataflowSpec.model_validate({"name": "x", "tasks": tasks}), fleet)
    assert sorted(t.device for t in p.tasks) == ["a", "a", "b", "b"]


# ---------------------------------------------------------------------------- optimal


@pytest.mark.parametrize("seed", range(12))
def test_optimal_costs_no_more_than_greedy(seed: int) -> None:
    s, fleet = random_instance(seed)
    g = place("df", s, fleet, strategy=S.greedy)
    o = place("df", s, fleet, strategy=S.optimal)
    assert o.cost["total"] <= g.cost["total"] + 1e-6
    assert o.strategy.startswith(("optimal", "greedy (ILP fallback"))


def brute_force(s: DataflowSpec, fleet: list[DeviceRecord]) -> float:
    """The best objective over every assignment (tiny instances only)."""
    p = build("df", s, fleet)
    best = float("inf")
    for choice in itertools.product(*(list(u.idx) for u in p.units)):
        sol = Solution(dev_of=[-1] * len(s.tasks), ledger=p.start.copy(), strategy="brute")
        for unit, d in zip(p.units, choice, strict=True):
            assign(p, sol, unit.id, int(d), hold_relays=False)
        if (sol.ledger.free_cpu < -1e-9).any() or (sol.ledger.free_mem < -1e-9).any():
            continue
        try:
            best = min(best, assess(p, sol).costs.total)
        except RouteError:
            continue
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_ilp_finds_the_true_optimum_of_small_instances(seed: int) -> None:
    s, fleet = random_instance(100 + seed)
    fleet = fleet[:4]
    s = DataflowSpec.model_validate(
        {
            **s.model_dump(by_alias=True),
            "tasks": [
                {**t.model_dump(), "placement": {"device": "d0"}} if t.id == "t0" else t.model_dump()
                for t in s.tasks[:5]
            ],
            "edges": [
                e.model_dump(by_alias=True) for e in s.edges if int(e.from_[1:]) < 5 and int(e.to[1:]) < 5
            ],
        }
    )
    expected = brute_force(s, fleet)
    if expected == float("inf"):
        with pytest.raises(Exception):  # noqa: B017 - no placement at all
            place("df", s, fleet, strategy=S.optimal)
        return
    o = place("df", s, fleet, strategy=S.optimal)
    assert o.strategy == "optimal"
    assert o.cost["total"] == pytest.approx(expected, rel=1e-6, abs=1e-6)


def saturating(seed: int) -> tuple[DataflowSpec, list[DeviceRecord]]:
    """A small instance whose agents are slow (300 to 3,000 records/s a core) and whose tasks
    run in the loop or in a worker: the processing term decides."""
    rng = random.Random(seed)
    fleet = [
        d.model_copy(
            update={
                "capacity": d.capacity.model_copy(
                    update={"records_per_s": rng.choice([300.0, 1000.0, 3000.0])}
                )
            }
        )
        for d in (
            dev("d0", "edge", capacity={"cpu": 1.0, "memory_mb": 2048}),
            dev("d1", "fog", capacity={"cpu": 2.0, "memory_mb": 2048}),
            dev("d2", "cloud", capacity={"cpu": 4.0, "memory_mb": 4096}),
        )
    ]
    tasks: list[dict[str, Any]] = [
        {
            "id": "t0",
            "operator": "io.generate",
            "config": {"count": 1},
            "placement": {"device": "d0"},
            "hints": {"rate": 200},
        }
    ]
    edges = []
    for k in range(1, 5):
        tasks.append(
            {
                "id": f"t{k}",
                "operator": "core.passthrough",
                "resources": {"worker": rng.random() < 0.5},
                "hints": {"cost": rng.choice([1.0, 3.0])},
            }
        )
        edges.append({"from": f"t{rng.randrange(k)}", "to": f"t{k}"})
    return DataflowSpec.model_validate({"name": "busy", "tasks": tasks, "edges": edges}), fleet


@pytest.mark.parametrize("seed", range(6))
def test_the_ilp_finds_the_true_optimum_when_agents_saturate(seed: int) -> None:
    s, fleet = saturating(200 + seed)
    expected = brute_force(s, fleet)
    o = place("df", s, fleet, strategy=S.optimal)
    assert o.strategy == "optimal"
    assert o.cost["total"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert o.cost["total"] <= place("df", s, fleet, strategy=S.greedy).cost["total"] + 1e-6


def test_optimal_falls_back_to_greedy_for_big_dataflows() -> None:
    p = place("df", chain(optimal.MAX_TASKS + 1), [dev("a"), dev("b")], strategy=S.optimal)
    assert p.strategy == f"greedy (ILP fallback: {optimal.MAX_TASKS + 1} tasks > {optimal.MAX_TASKS})"


def test_optimal_under_a_time_limit_keeps_the_better_answer() -> None:
    s, fleet = random_instance(3)
    g = place("df", s, fleet, strategy=S.greedy)
    sol = optimal.solve(build("df", s, fleet), time_limit=1e-6)
    assert sol.strategy.startswith(("greedy (ILP fallback: time limit)", "optimal"))
    assert assess(build("df", s, fleet), sol).costs.total <= g.cost["total"] + 1e-6


# ---------------------------------------------------------------------------- all of them


@pytest.mark.parametrize("strategy", list(S))
def test_same_input_same_placement_whatever_the_device_order(strategy: S) -> None:
    s, fleet = random_instance(5)
    first = place("df", s, fleet, strategy=strategy)
    for seed in range(3):
        shuffled = fleet[:]
        random.Random(seed).shuffle(shuffled)
        assert place("df", s, shuffled, strategy=strategy) == first
