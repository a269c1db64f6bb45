"""The cost of putting one unit on each of its candidate devices, given what is placed.

Vectorised over the unit's statically eligible devices (numpy), so a strategy looks at
every eligible device, not a sample: a unit costs ``O(devices)`` array work, no Python
loop over devices. The local score of device d, in the objective's units (``costs``)::

    latency   F(first member) on d: PROC_MS + max over its placed inputs (F(u) + hop(u -> d)),
              plus the hops of edges inside the unit (on d itself)
    depart    if the unit feeds tasks not placed yet: min over brokers one_way(d) +
              bytes · serf(d), the half-hop its consumers will pay anyway (look-ahead)
    transfer  W_TRANSFER · Δrho_d + W_OVERLOAD · Δ overload(rho_d) for the unit's Mbit/s
    load      W_LOAD · (g(f_d after) - g(f_d before)) + W_OVERLOAD · Δ overload of the agent's
              loop and of its cores (``costs``: processing)

Feasible: free capacity (CPU, memory, accelerators), anti-affinity with placed units, a
route to every placed neighbour, and broker codes that can reach some device each
unplaced neighbour may run on. Infeasible devices score ``inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from echo_shared.errors import PlacementError

from .channels import relay_room, route_error
from .constraints import capacity_mask, why_none
from .costs import PROC_MS, W_LOAD, W_OVERLOAD, W_TRANSFER, g, load_fraction, overload
from .errors import RouteError
from .fleet import BROKER_NAMES, MQTT, NATS, BoolArray, FloatArray, IntArray, Ledger
from .problem import Problem, Unit

TIE = 1e-9
CHUNK = 256


@dataclass
class Scores:
    idx: IntArray
    feasible: BoolArray
    latency: FloatArray
    depart: FloatArray
    transfer: FloatArray
    load: FloatArray
    upstream: frozenset[int]
    total: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        t: FloatArray = self.latency + self.depart + self.transfer + self.load
        self.total = np.where(self.feasible & np.isfinite(t), t, np.inf)

    def terms(self, pos: int) -> dict[str, float]:
        return {
            "latency_ms": float(self.latency[pos]),
            "depart_ms": float(self.depart[pos]),
            "transfer": float(self.transfer[pos]),
            "load": float(self.load[pos]),
        }

    @staticmethod
    def join(parts: Sequence[Scores]) -> Scores:
        if len(parts) == 1:
            return parts[0]
        return Scores(
            idx=np.concatenate([x.idx for x in parts]),
            feasible=np.concatenate([x.feasible for x in parts]),
            latency=np.concatenate([x.latency for x in parts]),
            depart=np.concatenate([x.depart for x in parts]),
            transfer=np.concatenate([x.transfer for x in parts]),
            load=np.concatenate([x.load for x in parts]),
            upstream=parts[0].upstream,
        )


def anti_devices(p: Problem, unit: Unit, dev_of: Sequence[int]) -> list[int]:
    if not unit.anti:
        return []
    return sorted({dev_of[p.units[a].members[0]] for a in unit.anti if dev_of[p.units[a].members[0]] >= 0})


@dataclass
class _Context:
    """What scoring a unit needs to know about its placed and unplaced neighbours."""

    inputs: list[tuple[int, int, float]]  # (device, bytes, finish) of the first member's placed inputs
    placed: list[tuple[int, int]]  # (device, bytes) of every other placed neighbour
    internal: list[int]  # bytes of edges inside the unit
    allowed: BoolArray  # broker codes that reach every unplaced neighbour
    feeds_unplaced: int  # bytes of the biggest edge to an unplaced consumer (0: none)
    anti: list[int]
    room: bool  # a relay has room

    def lower_bound(self, p: Problem) -> tuple[float, float]:
        """(c, k): every device d costs at least ``c + k · min_β one_way(d, β)``."""
        f = p.fleet
        c = PROC_MS
        for a, nbytes, fin in self.inputs:
            c = max(c, PROC_MS + fin + min(f.ow_mqtt[a], f.ow_nats[a]) + nbytes * float(f.serf[a]))
        k = (1.0 if self.inputs else 0.0) + (1.0 if self.feeds_unplaced else 0.0) + 2.0 * len(self.internal)
        return c, k


def _context(
    p: Problem, unit: Unit, ledger: Ledger, dev_of: Sequence[int], finish: Sequence[float]
) -> _Context:
    router = p.router
    first = unit.members[0]
    ctx = _Context([], [], [], np.ones(4, dtype=np.bool_), 0, anti_devices(p, unit, dev_of), True)
    for m in unit.members:
        for e in p.inputs[m] + p.outputs[m]:
            u, v = p.edges[e]
            other = u if v == m else v
            nbytes = p.traffic.record_bytes[u]
            if p.unit_of[other] == unit.id:
                if v == m:
                    ctx.internal.append(nbytes)
                continue
            d_other = dev_of[other]
            if d_other >= 0:
                if m == first and v == m:
                    ctx.inputs.append((d_other, nbytes, finish[other]))
                else:
                    ctx.placed.append((d_other, nbytes))
            else:
                ctx.allowed &= router.codes_routable_from(p.unit_codes(p.units[p.unit_of[other]]))
                if u == m:
                    ctx.feeds_unplaced = max(ctx.feeds_unplaced, nbytes)
    if len(router.relays) and (ctx.inputs or ctx.placed):
        ctx.room = relay_room(router, ledger)
    return ctx


def _score(p: Problem, unit: Unit, ledger: Ledger, ctx: _Context, idx: IntArray) -> Scores:
    f, router = p.fleet, p.router
    feasible = capacity_mask(ledger, idx, unit.cpu, unit.mem, unit.acc)
    latency: FloatArray = np.full(len(idx), PROC_MS)
    for a, nbytes, fin in ctx.inputs:
        h = router.hops(a, idx, nbytes, relays=ctx.room)
        latency = np.maximum(latency, PROC_MS + fin + h)
    for a, nbytes in ctx.placed:
        feasible &= np.isfinite(router.hops(a, idx, nbytes, relays=ctx.room))
    for nbytes in ctx.internal:
        latency = latency + router.hops_self(idx, nbytes)
    if not ctx.allowed.all():
        feasible &= ctx.allowed[f.code[idx]]
    if ctx.anti:
        feasible &= ~np.isin(idx, ctx.anti)
    if ctx.feeds_unplaced:
        depart = np.minimum(f.ow_mqtt[idx], f.ow_nats[idx]) + ctx.feeds_unplaced * f.serf[idx]
    else:
        depart = np.zeros(len(idx))
    bw = f.bandwidth[idx]
    rho0 = ledger.traffic[idx] / bw
    rho1 = rho0 + unit.mbps / bw
    transfer = W_TRANSFER * (rho1 - rho0) + W_OVERLOAD * (overload(rho1) - overload(rho0))
    cap_cpu, cap_mem = f.cap_cpu[idx], f.cap_mem[idx]
    used_cpu, used_mem = ledger.used_cpu[idx], ledger.used_mem[idx]
    f0 = load_fraction(used_cpu, used_mem, cap_cpu, cap_mem)
    f1 = load_fraction(used_cpu + unit.cpu, used_mem + unit.mem, cap_cpu, cap_mem)
    load = W_LOAD * (g(f1) - g(f0))
    if unit.loop or unit.work:
        speed = f.speed[idx]
        l0 = ledger.loop[idx] / speed
        l1 = l0 + unit.loop / speed
        whole = speed * f.cores[idx]
        b0 = ledger.busy[idx] / whole
        b1 = b0 + (unit.loop + unit.work) / whole
        load = load + W_OVERLOAD * (overload(l1) - overload(l0) + overload(b1) - overload(b0))
    return Scores(
        idx=idx,
        feasible=feasible,
        latency=latency,
        depart=depart,
        transfer=transfer,
        load=load,
        upstream=frozenset(a for a, _, _ in ctx.inputs),
    )


def score_unit(
    p: Problem, unit: Unit, ledger: Ledger, dev_of: Sequence[int], finish: Sequence[float]
) -> Scores:
    """Every statically eligible device of ``unit``, scored."""
    return _score(p, unit, ledger, _context(p, unit, ledger, dev_of, finish), unit.idx)


def best_scores(
    p: Problem, unit: Unit, ledger: Ledger, dev_of: Sequence[int], finish: Sequence[float]
) -> Scores:
    """The devices that can matter, scored: eligible devices in order of their own latency to
    a broker, chunk by chunk, until the next one's lower bound exceeds the best score found
    (branch and bound: the cheapest device is always among them)."""
    ctx = _context(p, unit, ledger, dev_of, finish)
    order, key = p.by_latency(unit)
    if len(order) <= CHUNK:
        return _score(p, unit, ledger, ctx, order)
    c, k = ctx.lower_bound(p)
    parts: list[Scores] = []
    best = np.inf
    start, size = 0, CHUNK
    while start < len(order):
        if k > 0 and parts and c + k * float(key[start]) > best + TIE * (1.0 + abs(best)):
            break
        part = _score(p, unit, ledger, ctx, order[start : start + size])
        parts.append(part)
        if len(part.total):
            best = min(best, float(part.total.min()))
        start += size
        size *= 4
        if k == 0 and np.isfinite(best):
            size = len(order)  # no bound: the rest in one go
    return Scores.join(parts)


def choose(s: Scores) -> tuple[int, int | None]:
    """Positions (in ``s.idx``) of the cheapest feasible device, ties going to a device that
    hosts an upstream task, then to the lowest id; and of the runner-up (or None)."""
    total = s.total
    if len(total) == 0:
        return -1, None
    low = float(total.min())
    if not np.isfinite(low):
        return -1, None
    ties = np.flatnonzero(total <= low + TIE * (1.0 + abs(low)))
    best = int(ties[np.argmin(s.idx[ties])])
    if s.upstream and len(ties) > 1:
        ups = ties[np.isin(s.idx[ties], np.fromiter(s.upstream, dtype=np.int64, count=len(s.upstream)))]
        if len(ups):
            best = int(ups[np.argmin(s.idx[ups])])
    rest = total.copy()
    rest[best] = np.inf
    second = int(np.argmin(rest))
    return best, (second if np.isfinite(rest[second]) else None)


def diagnose(p: Problem, unit: Unit, ledger: Ledger, dev_of: Sequence[int]) -> PlacementError:
    """Why no device can host ``unit``: a ``PlacementError`` naming the constraint, or a
    ``RouteError`` naming the edge that cannot be connected."""
    f = p.fleet
    who = unit.describe(p.spec)
    everyone = np.arange(len(f), dtype=np.int64)
    extra: list[tuple[str, BoolArray]] = []
    anti = anti_devices(p, unit, dev_of)
    if anti:
        names = ", ".join(
            f"{p.spec.tasks[p.units[a].members[0]].id} on {f.devices[dev_of[p.units[a].members[0]]].id}"
            for a in sorted(unit.anti)
            if dev_of[p.units[a].members[0]] >= 0
        )
        extra.append((f"anti-affinity (not with {names})", ~np.isin(everyone, anti)))
    err = why_none(who, unit.reqs, f, ledger, extra)
    remaining = np.zeros(len(f), dtype=np.bool_)
    remaining[unit.idx] = True
    remaining &= capacity_mask(ledger, everyone, unit.cpu, unit.mem, unit.acc)
    for _, ok in extra:
        remaining &= ok
    if not remaining.any():
        return err
    for m in unit.members:
        for e in sorted(p.inputs[m] + p.outputs[m]):
            u, v = p.edges[e]
            other = u if v == m else v
            if p.unit_of[other] == unit.id:
                continue
            d_other = dev_of[other]
            if d_other >= 0:
                room = relay_room(p.router, ledger)
                ok = np.isfinite(p.router.hops(d_other, everyone, p.traffic.record_bytes[u], relays=room))
            else:
                allowed = p.router.codes_routable_from(p.unit_codes(p.units[p.unit_of[other]]))
                ok = allowed[f.code]
            left = remaining & ok
            if not left.any():
                return _route_failure(p, e, m, other, d_other, remaining)
            remaining = left
    return err


def _route_failure(p: Problem, k: int, m: int, other: int, d_other: int, remaining: BoolArray) -> RouteError:
    f = p.fleet
    why = (
        "no online device reaches both"
        if len(p.router.relays) == 0
        else "no device that reaches both has room for a relay"
    )
    cands = np.flatnonzero(remaining)
    u, _ = p.edges[k]
    if d_other >= 0 and len(cands) == 1:
        a, b = (d_other, int(cands[0])) if u == other else (int(cands[0]), d_other)
        return route_error(p.spec, k, f, a, b, why)
    e = p.spec.edges[k]
    task = p.spec.tasks[m].id
    reach = " or ".join(sorted({_reach_of(int(c)) for c in np.unique(f.code[cands])}))
    if d_other >= 0:
        reach_other = _reach_of(int(f.code[d_other]))
        target = f"{f.devices[d_other].id} ({p.spec.tasks[other].id}), which reaches {reach_other}"
    else:
        target = f"any device {p.spec.tasks[other].id} may run on"
    ids = ", ".join(f.ids(cands[:5])) + ("..." if len(cands) > 5 else "")
    return RouteError(
        f"edge {e.from_}→{e.to} (edges[{k}]): the devices left for {task} ({ids}) reach {reach} "
        f"and cannot reach {target}; {why}",
        edge=k,
    )


def _reach_of(code: int) -> str:
    names = [BROKER_NAMES[b] for b in (MQTT, NATS) if code & b]
    if not names:
        return "no broker"
    return f"only {names[0]}" if len(names) == 1 else " and ".join(names)
