"""Placement: ``(spec, devices, reserved, rates) -> Placement``, pure and deterministic.

``place`` validates the spec, builds the problem (``problem``: units, traffic, fleet
arrays), rejects edges that cannot be connected wherever their tasks go (``RouteError``),
runs the spec's strategy (``roundrobin``, ``greedy``, ``optimal``), chooses every edge's
channel and relays (``channels``), evaluates the objective (``costs``) and explains every
choice (``explaining``). Hard constraints are in ``constraints``; the same input gives
the same placement whatever the order of the devices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from echo_shared.errors import PlacementError
from echo_shared.models import DataflowSpec, DeviceRecord, Placement, PlacementStrategy
from echo_shared.names import Names

from . import explaining, greedy, neighbourhood, optimal, roundrobin
from .errors import RouteError
from .fleet import Reservation
from .outcome import assess
from .problem import Problem, build
from .solution import Solution
from .validating import validate

STRATEGIES: dict[PlacementStrategy, Callable[[Problem], Solution]] = {
    PlacementStrategy.round_robin: roundrobin.solve,
    PlacementStrategy.greedy: greedy.solve,
    PlacementStrategy.optimal: optimal.solve,
}


def place(
    dataflow_id: str,
    spec: DataflowSpec,
    devices: Sequence[DeviceRecord],
    reserved: Mapping[str, Reservation] | None = None,
    names: Names | None = None,
    rates: Mapping[str, float] | None = None,
    *,
    strategy: PlacementStrategy | None = None,
    pinned: Mapping[str, str] | None = None,
    avoid: Mapping[str, Sequence[str]] | None = None,
) -> Placement:
    """Place every task of a valid spec, or raise ``PlacementError`` (``RouteError`` for an
    edge that cannot be connected) with the reason. ``strategy`` overrides the spec's;
    ``pinned`` keeps tasks on the devices given (a migration moves one task, the others
    stay), ``avoid`` keeps tasks off devices (the one a task migrates away from)."""
    validate(spec)
    if pinned:
        spec = pin(spec, pinned)
    p = build(dataflow_id, spec, devices, reserved, rates, avoid)
    p.check_static()
    sol = STRATEGIES[strategy or spec.placement_strategy](p)
    out = assess(p, sol, names or Names())
    return explaining.placement(p, sol, out)


def place_moving(
    dataflow_id: str,
    spec: DataflowSpec,
    devices: Sequence[DeviceRecord],
    pinned: Mapping[str, str],
    reserved: Mapping[str, Reservation] | None = None,
    names: Names | None = None,
    rates: Mapping[str, float] | None = None,
    *,
    strategy: PlacementStrategy | None = None,
    avoid: Mapping[str, Sequence[str]] | None = None,
) -> Placement:
    """Place the tasks ``pinned`` leaves free, every other task staying where ``pinned`` has
    it, on their neighbourhood alone (``neighbourhood``): the placement holds the moving
    tasks and their neighbours. What a migration of one task asks, at the cost of its
    neighbours instead of the dataflow's. ``spec`` is the dataflow as it was accepted
    (validated then): only the neighbourhood is looked at."""
    hood = neighbourhood.cut(spec, pinned, rates, reserved)
    p = build(dataflow_id, hood.spec, devices, hood.reserved, hood.rates, avoid, hood.processing)
    p.check_static()
    sol = STRATEGIES[strategy or spec.placement_strategy](p)
    out = assess(p, sol, names or Names())
    return explaining.placement(p, sol, out)


def pin(spec: DataflowSpec, pinned: Mapping[str, str]) -> DataflowSpec:
    """The spec with the tasks of ``pinned`` pinned to their devices."""
    tasks = [
        t.model_copy(update={"placement": t.placement.model_copy(update={"device": pinned[t.id]})})
        if t.id in pinned
        else t
        for t in spec.tasks
    ]
    return spec.model_copy(update={"tasks": tasks})


def route_problems(spec: DataflowSpec, devices: Sequence[DeviceRecord]) -> list[RouteError]:
    """The route check of a placement, dry: every edge of a valid spec that cannot be
    connected wherever its tasks may run on these devices (no capacity involved)."""
    return build("df-check", spec, devices).route_errors()


__all__ = ["STRATEGIES", "PlacementError", "RouteError", "pin", "place", "place_moving", "route_problems"]
