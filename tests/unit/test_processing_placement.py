"""Placement knows an agent's processing: its event loop is one core, its worker processes
use the others, and its speed is what one core forwards (``capacity.records_per_s``)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from echo_scheduler.costs import cost_per_record, runs_in_worker
from echo_scheduler.placing import place, place_moving
from echo_scheduler.validating import problems
from echo_shared.models import Capacity, DataflowSpec, DeviceRecord, DeviceStatus, PlacementStrategy, Tier

SPEED = 10_000.0


def dev(i: str, cpu: float = 4.0, speed: float | None = SPEED) -> DeviceRecord:
    return DeviceRecord(
        id=i,
        tier=Tier.fog,
        capacity=Capacity(cpu=cpu, memory_mb=8192, records_per_s=speed),
        runtimes=["python"],
        status=DeviceStatus.online,
    )


def chain(rate: float, stages: int, **stage: Any) -> DataflowSpec:
    tasks: list[dict[str, Any]] = [
        {"id": "gen", "operator": "io.generate", "config": {"count": 10}, "hints": {"rate": rate}}
    ]
    tasks += [{"id": f"s{i}", "operator": "core.passthrough", **stage} for i in range(stages)]
    tasks.append({"id": "sink", "operator": "io.file_sink", "config": {"path": "x"}})
    ids = [t["id"] for t in tasks]
    return DataflowSpec.model_validate(
        {"name": "chain", "tasks": tasks, "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]}
    )


def loops(placement: Any) -> dict[str, float]:
    return {t.device: t.costs["agent_loop_util"] for t in placement.tasks}


def test_a_slow_rate_keeps_the_chain_on_one_agent() -> None:
    p = place("df", chain(20, 6), [dev("fog-1"), dev("fog-2"), dev("fog-3")])
    assert len({t.device for t in p.tasks}) == 1
    assert max(loops(p).values()) == pytest.approx(8 * 20 / SPEED)


@pytest.mark.parametrize("strategy", [PlacementStrategy.greedy, PlacementStrategy.optimal])
def test_a_fast_chain_is_spread_so_that_no_agent_loop_saturates(strategy: PlacementStrategy) -> None:
    # 8 tasks x 2,000 records/s = 16,000 records/s of forwarding: two agents' loops at least
    p = place("df", chain(2_000, 6), [dev("fog-1"), dev("fog-2"), dev("fog-3")], strategy=strategy)
    util = loops(p)
    assert len(util) >= 2
    assert max(util.values()) <= 0.8 + 1e-9
    assert sum(t.costs["processing"] for t in p.tasks) == pytest.approx(16_000)
    if strategy is PlacementStrategy.optimal:
        assert p.strategy.startswith("optimal"), p.strategy


def test_heavy_stages_in_worker_processes_fit_one_agent_with_cores_to_spare() -> None:
    # six stages costing 10 records' forwarding each, at 500 records/s: 31,000 on one loop,
    # or 4,000 on the loop (every task's channels) and 30,000 on eight cores' workers
    heavy = {"hints": {"cost": 10}}
    devices = [dev("fog-1", cpu=8), dev("fog-2", cpu=8), dev("fog-3", cpu=8)]
    inside = place("df", chain(500, 6, **heavy), devices)
    assert len({t.device for t in inside.tasks}) == 3
    p = place("df", chain(500, 6, **heavy, resources={"worker": True}), devices)
    assert len({t.device for t in p.tasks}) == 1
    t = p.tasks[0]
    assert t.costs["agent_loop_util"] == pytest.approx(8 * 500 / SPEED)
    assert t.costs["agent_cores_util"] == pytest.approx((8 * 500 + 6 * 5_000) / (8 * SPEED))


def test_a_stage_in_a_worker_still_puts_its_channels_on_the_loop() -> None:
    # 8 x 2,000 records/s of channels: a worker takes the operator off the loop, not them
    p = place("df", chain(2_000, 6, resources={"worker": True}), [dev("fog-1", cpu=8), dev("fog-2", cpu=8)])
    assert max(loops(p).values()) <= 0.8 + 1e-9
    assert len({t.device for t in p.tasks}) == 2


def test_a_slow_agent_takes_what_its_loop_can_carry_and_a_fast_one_the_rest() -> None:
    # the slow agent's loop carries two stages of 2,000 records/s (80 %), the fast one all
    p = place("df", chain(2_000, 6), [dev("b-fast", speed=100_000), dev("a-slow", speed=5_000)])
    on_slow = [t.task for t in p.tasks if t.device == "a-slow"]
    assert len(on_slow) <= 2
    assert max(loops(p).values()) <= 0.8 + 1e-9


def test_an_unknown_speed_is_the_tier_default() -> None:
    # fog: 50,000 records/s per core; 16,000 fit one loop
    p = place("df", chain(2_000, 6), [dev("fog-1", speed=None), dev("fog-2", speed=None)])
    assert len({t.device for t in p.tasks}) == 1
    assert max(loops(p).values()) == pytest.approx(16_000 / 50_000)


def test_cost_and_worker_of_a_task() -> None:
    s = DataflowSpec.model_validate(
        {
            "name": "c",
            "tasks": [
                {"id": "a", "operator": "etl.senml_parse"},
                {"id": "b", "operator": "core.passthrough", "hints": {"cost": 7.5}},
                {"id": "c", "operator": "python:pkg.mod:Op"},
                {
                    "id": "d",
                    "operator": "core.map",
                    "config": {"set": {"x": "1"}},
                    "resources": {"worker": True},
                },
            ],
        }
    )
    a, b, c, _ = s.tasks
    assert cost_per_record(a) > 2 and cost_per_record(b) == 7.5 and cost_per_record(c) == 1.0
    assert [runs_in_worker(t) for t in s.tasks] == [False, False, True, True]


def test_a_worker_for_an_operator_of_the_agent_is_refused_naming_the_field() -> None:
    s = DataflowSpec.model_validate(
        {
            "name": "w",
            "tasks": [
                {
                    "id": "gen",
                    "operator": "io.generate",
                    "config": {"count": 1},
                    "resources": {"worker": True},
                },
                {
                    "id": "ok",
                    "operator": "etl.range_filter",
                    "config": {"ranges": {"x": [0, 1]}},
                    "resources": {"worker": True},
                },
            ],
            "edges": [{"from": "gen", "to": "ok"}],
        }
    )
    found = problems(s)
    assert [p.loc for p in found] == ["tasks[0].resources.worker"]
    assert "io.generate cannot run in a worker process" in found[0].msg


def test_moving_one_task_counts_what_the_others_put_on_each_agent() -> None:
    # agent a already carries five stages of 2,000 records/s (its loop full): the moving stage
    # goes to b, though a hosts its producer (the one-task path sees the observed rates)
    s = chain(2_000, 6)
    ids = [t.id for t in s.tasks]
    pinned = {tid: "a" for tid in ids if tid not in ("s5", "sink")} | {"sink": "b"}
    rates = dict.fromkeys(ids, 2_000.0)
    devices = [dev("a"), dev("b")]
    moved = place_moving("df", s, devices, pinned, rates=rates)
    assert moved.device_of("s5") == "b"
    whole = place("df", s, devices, rates=rates, pinned=pinned)
    assert whole.device_of("s5") == "b"


def test_a_pinned_downstream_task_holds_its_device_before_the_pass() -> None:
    # the sink is pinned to a device it fills to 80 %; the free stage before it in dependency
    # order must not pick that device (nothing else would show it full before the sink)
    s = chain(4_000, 1)
    s.tasks[-1].placement.device = "a"
    s.tasks[-1].hints.cost = 2.0  # 8,000 records/s of a 10,000 loop
    s.tasks[0].placement.device = "b"
    s.tasks[0].hints.cost = 2.0  # b's loop at 80 % too: a and c are the free stage's choices
    p = place("df", s, [dev("a"), dev("b"), dev("c")])
    assert p.device_of("sink") == "a"
    assert p.device_of("s0") == "c", loops(p)
