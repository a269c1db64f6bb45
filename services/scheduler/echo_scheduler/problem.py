"""A placement problem: the spec as index arrays, its units, traffic, fleet and router.

Tasks are numbered by their position in the spec, devices by their position in the
fleet (sorted by id). A unit is a co-location group (``colocate_with``, transitively), or
a task on its own; anti-affinity is kept between units (symmetric).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from echo_shared.models import DataflowSpec, DeviceRecord

from .channels import Router, static_route_error
from .constraints import Requirement, static_mask, sum_accelerators, why_none
from .costs import Traffic
from .errors import RouteError
from .fleet import Fleet, FloatArray, IntArray, Ledger, Reservation
from .validating import topological_order


@dataclass
class Unit:
    id: int
    members: list[int]  # task indices, in topological order
    reqs: list[Requirement]
    idx: IntArray  # devices satisfying every static constraint of every member
    cpu: float
    mem: float
    acc: dict[str, int]
    mbps: float  # what its tasks send and receive through the uplink
    anti: set[int] = field(default_factory=set)
    loop: float = 0.0  # the processing its tasks put on the agent's loop (records/s)
    work: float = 0.0  # ... in worker processes

    @property
    def pinned(self) -> bool:
        return any(r.pinned for r in self.reqs)

    def describe(self, spec: DataflowSpec) -> str:
        first = spec.tasks[self.members[0]].id
        if len(self.members) == 1:
            return f"task {first!r}"
        rest = ", ".join(spec.tasks[m].id for m in self.members[1:])
        return f"task {first!r} (with {rest}, co-located)"


@dataclass
class Problem:
    dataflow_id: str
    spec: DataflowSpec
    fleet: Fleet
    router: Router
    start: Ledger
    order: list[int]  # task indices, topological
    edges: list[tuple[int, int]]
    inputs: list[list[int]]  # edge indices into each task
    outputs: list[list[int]]
    traffic: Traffic
    units: list[Unit]
    unit_of: list[int]
    _codes: dict[int, set[int]] = field(default_factory=dict)
    _order: dict[int, tuple[IntArray, FloatArray]] = field(default_factory=dict)

    @property
    def edge_bytes(self) -> list[int]:
        return [self.traffic.record_bytes[u] for u, _ in self.edges]

    def unit_codes(self, unit: Unit) -> set[int]:
        """The broker codes among a unit's statically eligible devices (cached)."""
        key = id(unit.idx)  # units with the same constraints share one array
        got = self._codes.get(key)
        if got is None:
            counts = np.bincount(self.fleet.code[unit.idx], minlength=4)
            got = {int(c) for c in np.flatnonzero(counts)}
            self._codes[key] = got
        return got

    def by_latency(self, unit: Unit) -> tuple[IntArray, FloatArray]:
        """A unit's eligible devices by their own latency to the nearest broker (then id), and
        that latency (cached: units with the same constraints share one array)."""
        key = id(unit.idx)
        got = self._order.get(key)
        if got is None:
            lat = np.minimum(self.fleet.ow_mqtt[unit.idx], self.fleet.ow_nats[unit.idx])
            o = np.argsort(lat, kind="stable")
            got = (unit.idx[o], lat[o])
            self._order[key] = got
        return got

    def route_errors(self) -> list[RouteError]:
        """A ``RouteError(pinned=True)`` for every edge whose ends cannot be connected wherever
        they go (their statically eligible devices share no broker and nobody can relay)."""
        out: list[RouteError] = []
        routable = self.router.routable
        for k, (u, v) in enumerate(self.edges):
            uu, uv = self.units[self.unit_of[u]], self.units[self.unit_of[v]]
            cu, cv = self.unit_codes(uu), self.unit_codes(uv)
            if not cu or not cv or any(routable[a, b] for a in cu for b in cv):
                continue
            err = static_route_error(self.spec, k, self.fleet, self.router, uu.idx, uv.idx)
            if err is not None:
                out.append(err)
        return out

    def check_static(self) -> None:
        """Fail early: a unit no device could ever host (whatever the others do), then an edge
        that cannot be connected wherever its ends go."""
        for unit in self.units:
            if len(unit.idx) == 0:
                raise why_none(unit.describe(self.spec), unit.reqs, self.fleet, self.start)
        errors = self.route_errors()
        if errors:
            raise errors[0]


def build(
    dataflow_id: str,
    spec: DataflowSpec,
    devices: Sequence[DeviceRecord],
    reserved: Mapping[str, Reservation] | None = None,
    rates: Mapping[str, float] | None = None,
    avoid: Mapping[str, Sequence[str]] | None = None,
    processing: Mapping[str, tuple[float, float]] | None = None,
) -> Problem:
    """The problem of a *valid* spec (``validating.validate`` first); ``avoid``: devices a
    task must not be placed on (task id -> device ids)."""
    fleet = Fleet.of(devices)
    pos = {t.id: i for i, t in enumerate(spec.tasks)}
    n = len(spec.tasks)
    edges = [(pos[e.from_], pos[e.to]) for e in spec.edges]
    inputs: list[list[int]] = [[] for _ in range(n)]
    outputs: list[list[int]] = [[] for _ in range(n)]
    for k, (u, v) in enumerate(edges):
        outputs[u].append(k)
        inputs[v].append(k)
    order = [pos[t] for t in topological_order(spec)]
    rank = {t: r for r, t in enumerate(order)}
    traffic = Traffic.of(spec.tasks, order, edges, inputs, rates)

    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, task in enumerate(spec.tasks):
        for other in task.placement.colocate_with:
            a, b = find(i), find(pos[other])
            if a != b:
                parent[max(a, b, key=lambda x: rank[x])] = min(a, b, key=lambda x: rank[x])
    groups: dict[int, list[int]] = {}
    for t in order:
        groups.setdefault(find(t), []).append(t)
    reqs = [Requirement.of(t, (avoid or {}).get(t.id, ())) for t in spec.tasks]
    idx_cache: dict[tuple[tuple[str, str, str], ...], IntArray] = {}
    units: list[Unit] = []
    unit_of = [0] * n
    for members in sorted(groups.values(), key=lambda m: rank[m[0]]):
        ureqs = [reqs[m] for m in members]
        key = tuple(sorted({c for r in ureqs for c in r.static_checks()}))
        idx = idx_cache.get(key)
        if idx is None:
            idx = np.flatnonzero(static_mask(fleet, ureqs)).astype(np.int64)
            idx_cache[key] = idx
        unit = Unit(
            id=len(units),
            members=members,
            reqs=ureqs,
            idx=idx,
            cpu=sum(r.cpu for r in ureqs),
            mem=sum(r.mem for r in ureqs),
            acc=sum_accelerators(ureqs),
            mbps=sum(traffic.task_mbps[m] for m in members),
            loop=sum(traffic.loop[m] for m in members),
            work=sum(traffic.work[m] for m in members),
        )
        for m in members:
            unit_of[m] = unit.id
        units.append(unit)
    for i, task in enumerate(spec.tasks):
        for other in task.placement.anti_affinity:
            a, b = unit_of[i], unit_of[pos[other]]
            if a != b:
                units[a].anti.add(b)
                units[b].anti.add(a)
    relay_ok = fleet.mask("online", "") & fleet.mask("runtime", "python")
    return Problem(
        dataflow_id=dataflow_id,
        spec=spec,
        fleet=fleet,
        router=Router(fleet, relay_ok),
        start=Ledger.of(fleet, reserved or {}, processing),
        order=order,
        edges=edges,
        inputs=inputs,
        outputs=outputs,
        traffic=traffic,
        units=units,
        unit_of=unit_of,
    )
