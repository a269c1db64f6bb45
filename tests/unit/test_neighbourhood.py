"""Moving a task on its neighbourhood: what it cuts out of the dataflow, and that the
device it picks is one the whole placement accepts, at a cost no higher."""

from __future__ import annotations

import random
from typing import Any

import pytest

from echo_scheduler.costs import Traffic
from echo_scheduler.neighbourhood import cut
from echo_scheduler.placing import place, place_moving
from echo_scheduler.problem import build
from echo_scheduler.service import SchedulerService
from echo_shared.errors import PlacementError
from echo_shared.messages import PlaceRequest
from echo_shared.models import DataflowSpec, PlacementStrategy
from echo_shared.names import Names

from .test_placing import dev


def task(tid: str, op: str = "core.passthrough", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tid, "operator": op, **extra}
    if op == "io.generate":
        out["config"] = {"count": 1}
    return out


def spec(tasks: list[dict[str, Any]], edges: list[tuple[str, str]]) -> DataflowSpec:
    return DataflowSpec.model_validate(
        {"name": "n", "tasks": tasks, "edges": [{"from": a, "to": b} for a, b in edges]}
    )


def chain() -> DataflowSpec:
    """g -> a -> b -> c -> d, x co-located with b, y kept apart from b, z alone."""
    return spec(
        [
            task("g", "io.generate", hints={"rate": 40}),
            task("a", hints={"selectivity": 0.5}),
            task("b"),
            task("c"),
            task("d"),
            task("x", placement={"colocate_with": ["b"]}),
            task("y", placement={"anti_affinity": ["b"]}),
            task("z", "io.generate", resources={"cpu": 0.7, "memory_mb": 64}),
        ],
        [("g", "a"), ("a", "b"), ("b", "c"), ("c", "d"), ("a", "x"), ("z", "y")],
    )


def test_cut_keeps_the_movers_their_neighbours_pinned_and_the_edges_among_them() -> None:
    s = chain()
    where = {t.id: f"dev-{i}" for i, t in enumerate(s.tasks)}
    pinned = {k: v for k, v in where.items() if k != "b"}
    hood = cut(s, pinned)
    got = {t.id: t.placement.device for t in hood.spec.tasks}
    # b moves; x, co-located with it, comes along and keeps its pin (the unit follows it, as
    # in the whole placement); a and c are b's neighbours, y its anti-affinity partner
    assert got == {"a": "dev-1", "b": None, "c": "dev-3", "x": "dev-5", "y": "dev-6"}
    assert {(e.from_, e.to) for e in hood.spec.edges} == {("a", "b"), ("b", "c"), ("a", "x")}
    # rates as the whole dataflow has them: g 40/s, a halves it, the rest pass on
    assert hood.rates == {"a": 20.0, "b": 20.0, "c": 20.0, "x": 20.0, "y": 100.0}
    # what the tasks left out hold stays reserved where they run
    assert hood.reserved["dev-0"] == (0.1, 32.0)
    assert hood.reserved["dev-7"] == (0.7, 64.0)
    assert "dev-1" not in hood.reserved  # a is in the neighbourhood


def test_cut_rates_match_the_whole_dataflows_estimate_and_take_observed_rates() -> None:
    rng = random.Random(3)
    tasks = [task("s0", "io.generate", hints={"rate": 10}), task("s1", "io.generate")]
    edges: list[tuple[str, str]] = []
    for i in range(30):
        tasks.append(task(f"t{i}", hints={"selectivity": rng.choice([0.5, 1.0, 2.0])}))
        ups = [t["id"] for t in tasks[:-1]]
        for u in rng.sample(ups, min(len(ups), rng.randint(1, 3))):
            edges.append((u, f"t{i}"))
    s = spec(tasks, edges)
    observed = {"t5": 3.0}
    p = build("df", s, [dev("d")])
    whole = Traffic.of(s.tasks, p.order, p.edges, p.inputs, observed)
    rate_of = {t.id: whole.rate_out[i] for i, t in enumerate(s.tasks)}
    for mover in ("t3", "t17", "t29"):
        hood = cut(s, {t.id: "d" for t in s.tasks if t.id != mover}, observed)
        assert hood.rates == pytest.approx({t.id: rate_of[t.id] for t in hood.spec.tasks})


def test_cut_adds_this_dataflows_holdings_to_the_other_dataflows_reservations() -> None:
    s = spec(
        [
            task("g", "io.generate"),
            task("a", resources={"cpu": 0.25, "memory_mb": 10}, placement={"accelerators": {"gpu": 1}}),
            task("b"),
            task("c", resources={"cpu": 0.5, "memory_mb": 20}),
        ],
        [("g", "b"), ("a", "c")],
    )
    hood = cut(s, {"g": "d1", "a": "d2", "c": "d2"}, reserved={"d2": (1.0, 100.0, {"gpu": 1})})
    assert {t.id for t in hood.spec.tasks} == {"g", "b"}
    assert hood.reserved == {"d2": (1.75, 130.0, {"gpu": 2})}


FLEET = [
    dev("edge-1", "edge", cpu=1.0),
    dev("edge-2", "edge", cpu=1.0),
    dev("fog-1", "fog", cpu=1.0),
    dev("fog-2", "fog", cpu=1.0),
    dev("cloud-1", "cloud", cpu=1.0),
]


def test_a_device_full_of_tasks_outside_the_neighbourhood_is_not_chosen() -> None:
    """fog-1 is the best place for b, but c and d (not neighbours of b) fill it."""
    s = spec(
        [
            task("g", "io.generate", placement={"device": "edge-1"}),
            task("a", placement={"device": "fog-1"}),
            task("b", resources={"cpu": 0.5, "memory_mb": 32}),
            task("c", "io.generate", resources={"cpu": 0.45, "memory_mb": 32}),
            task("e", resources={"cpu": 0.1, "memory_mb": 32}),
        ],
        [("g", "a"), ("a", "b"), ("c", "e")],
    )
    pinned = {"g": "edge-1", "a": "fog-1", "c": "fog-1", "e": "fog-1"}
    p = place_moving("df", s, FLEET, pinned, avoid={"b": ["cloud-1"]})
    assert p.device_of("b") != "fog-1"
    # the whole placement agrees that fog-1 cannot take it
    whole = place("df", s, FLEET, pinned=pinned, avoid={"b": ["cloud-1"]})
    assert whole.device_of("b") != "fog-1"


def test_the_placement_holds_the_neighbourhood_with_its_channels() -> None:
    s = chain()
    first = place("df", s, FLEET)
    where = {t.task: t.device for t in first.tasks}
    pinned = {k: v for k, v in where.items() if k not in ("c",)}
    p = place_moving("df", s, FLEET, pinned, avoid={"c": [where["c"]]})
    assert {t.task for t in p.tasks} == {"b", "c", "d"}
    assert p.device_of("c") != where["c"]
    assert p.device_of("b") == where["b"] and p.device_of("d") == where["d"]
    assert {(c.from_task, c.to_task) for c in p.channels} == {("b", "c"), ("c", "d")}
    assert all(t.reason for t in p.tasks)


def test_a_move_nowhere_to_go_says_why() -> None:
    s = chain()
    where = {t.id: "fog-1" for t in s.tasks}
    with pytest.raises(PlacementError, match="c"):
        place_moving(
            "df", s, FLEET, {k: v for k, v in where.items() if k != "c"}, avoid={"c": [d.id for d in FLEET]}
        )


@pytest.mark.parametrize("seed", range(6))
def test_on_random_dataflows_the_move_costs_no_more_than_the_whole_placements(seed: int) -> None:
    """The objective of the whole dataflow after the move, with the device the neighbourhood
    picked and with the one the whole placement picked: never worse (the whole placement's
    pinned pass cannot see the load of tasks later in its order)."""
    rng = random.Random(seed)
    fleet = [
        dev(f"{tier}-{i}", tier, cpu=rng.choice([1.0, 2.0, 4.0]))
        for tier in ("edge", "fog", "cloud")
        for i in range(4)
    ]
    tasks = [task("src", "io.generate")]
    edges = []
    for i in range(14):
        tasks.append(task(f"t{i}", resources={"cpu": rng.choice([0.1, 0.3, 0.5]), "memory_mb": 32}))
        edges.append((rng.choice([t["id"] for t in tasks[:-1]]), f"t{i}"))
    s = spec(tasks, edges)
    where = {t.task: t.device for t in place("df", s, fleet, strategy=PlacementStrategy.greedy).tasks}
    mover = f"t{rng.randrange(14)}"
    pinned = {k: v for k, v in where.items() if k != mover}
    avoid = {mover: [where[mover]]}
    mine = place_moving("df", s, fleet, pinned, avoid=avoid, strategy=PlacementStrategy.greedy).device_of(
        mover
    )
    whole = place("df", s, fleet, pinned=pinned, avoid=avoid, strategy=PlacementStrategy.greedy).device_of(
        mover
    )
    assert mine != where[mover]

    def total(device: str) -> float:
        return place("df", s, fleet, pinned={**pinned, mover: device}).cost["total"]

    assert total(mine) <= total(whole) + 1e-6


async def test_the_scheduler_answers_a_move_with_the_neighbourhoods_placement() -> None:
    """``PlaceRequest.neighbourhood`` (what the migrator sends) goes the neighbourhood's way;
    without it the whole dataflow is placed, as before."""

    class FixedFleet(SchedulerService):
        async def devices(self, timeout: float | None = None) -> list[Any]:
            return FLEET

    service = FixedFleet(bus=None, names=Names(), registry_timeout=1.0)  # type: ignore[arg-type]
    s = chain()
    where = {t.task: t.device for t in place("df", s, FLEET).tasks}
    pinned = {k: v for k, v in where.items() if k != "c"}
    moved = await service.place(
        PlaceRequest(dataflow="df", spec=s, pinned=pinned, avoid={"c": [where["c"]]}, neighbourhood=True)
    )
    assert moved.ok and moved.placement is not None
    assert {t.task for t in moved.placement.tasks} == {"b", "c", "d"}
    assert moved.placement.device_of("c") != where["c"]
    whole = await service.place(PlaceRequest(dataflow="df", spec=s, pinned=pinned, avoid={"c": [where["c"]]}))
    assert whole.placement is not None and len(whole.placement.tasks) == len(s.tasks)
