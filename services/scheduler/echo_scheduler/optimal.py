"""``optimal``: the objective of ``costs`` as an integer linear program, solved by HiGHS.

For small problems (at most ``MAX_TASKS`` tasks; devices cut to ``MAX_DEVICES``, keeping
the greedy's and the best-connected least-loaded ones), with a ``TIME_LIMIT``. The greedy
answer is the starting solution and the fallback: the result is whichever of the two
costs less once assessed (channels and relays chosen, objective evaluated), and
``Placement.strategy`` says which it was: ``optimal``, ``optimal (time limit, gap x%)``,
or ``greedy (ILP fallback: <why>)``.

Formulation (unit = co-location group; device codes = the brokers a device reaches)::

    x[u,d] ∈ {0,1}, Σ_d x[u,d] = 1                      one device per unit
    Σ_u cpu_u x[u,d] <= free_cpu_d (memory, accelerators)  capacity
    x[u,d] + x[w,d] <= 1                                  anti-affinity
    X_c1(u) + X_c2(v) <= 1 for unroutable codes (c1, c2)  routes (X_c = Σ over devices of code c)
    F_t >= PROC, Z >= F_t
    F_v >= F_u + PROC + Σ_{d∈c1} x[u,d] w1(d) + Σ_{d∈c2} x[v,d] w2(d) + R(c1,c2)
           - BIG (2 - X_c1(u) - X_c2(v))                 for every edge and routable (c1, c2)
    rho-overflow o_d >= traffic_d / bw_d - RHO_MAX,  load f_d >= used fractions, s_k,d >= f_d - knee_k
    processing   q_d >= loop_d / speed_d - RHO_MAX,  r_d >= busy_d / (speed_d cores_d) - RHO_MAX
    minimise Z + transfer + load                          (exactly ``costs.evaluate``)

where w1/w2 are the one-way latency to the edge's broker plus the bytes' time through
the uplink and R the best relay's added latency when the codes share no broker (its
relay device fixed per broker pair, as ``Router.relay_cost``; the relay's capacity is
checked when channels are chosen).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from echo_shared.errors import PlacementError

from . import greedy
from .channels import RELAY_CPU, RELAY_MEM_MB, Router
from .costs import LOAD_KNEES, PROC_MS, RHO_MAX, W_LOAD, W_OVERLOAD, W_TRANSFER, g, load_fraction
from .explaining import posthoc_decisions
from .fleet import MQTT, NATS, IntArray
from .milp import Milp, MilpResult
from .outcome import assess
from .problem import Problem
from .solution import Solution, assign

MAX_TASKS = 40
MAX_DEVICES = 50
TIME_LIMIT = 2.0


def solve(p: Problem, *, time_limit: float = TIME_LIMIT) -> Solution:
    try:
        base: Solution | None = greedy.solve(p)
        base_error: PlacementError | None = None
    except PlacementError as e:
        base, base_error = None, e
    if len(p.spec.tasks) > MAX_TASKS:
        return _fallback(base, base_error, f"{len(p.spec.tasks)} tasks > {MAX_TASKS}")
    cands, cut = _candidates(p, base)
    if any(len(c) == 0 for c in cands):
        return _fallback(base, base_error, "a task has no candidate device")
    model, x = _formulate(p, cands)
    start = _start(p, x, base) if base is not None else None
    result = model.solve(time_limit=time_limit, start=start)
    ilp = _solution(p, x, result) if result.values else None
    if ilp is None:
        return _fallback(base, base_error, result.status)
    label = "optimal" if result.status == "optimal" else f"optimal ({result.status}, gap {result.gap:.1%})"
    if cut:
        label += f" (among {cut[0]} of {cut[1]} devices)"
    try:
        ilp_cost = assess(p, ilp).costs.total
    except PlacementError:
        return _fallback(base, base_error, "its placement has no relay with room")
    if base is not None:
        base_cost = assess(p, base).costs.total
        if base_cost < ilp_cost - 1e-9:
            if result.status == "optimal":  # equal within the solver's tolerance
                base.strategy = label
                return base
            return _fallback(base, base_error, result.status)
    ilp.strategy = label
    posthoc_decisions(p, ilp, "ILP optimum")
    return ilp


def _fallback(base: Solution | None, error: PlacementError | None, why: str) -> Solution:
    if base is None:
        assert error is not None
        raise error
    base.strategy = f"greedy (ILP fallback: {why})"
    return base


def _candidates(p: Problem, base: Solution | None) -> tuple[list[IntArray], tuple[int, int] | None]:
    """Each unit's devices in the model: statically eligible with room for it; when more
    than ``MAX_DEVICES`` devices remain, the greedy's plus the best-connected least loaded."""
    led = p.start
    per_unit: list[IntArray] = []
    for unit in p.units:
        idx = unit.idx
        ok = (led.free_cpu[idx] + 1e-9 >= unit.cpu) & (led.free_mem[idx] + 1e-9 >= unit.mem)
        for kind, n in unit.acc.items():
            ok &= led.acc_free(kind)[idx] >= n
        if p.inputs[unit.members[0]] or any(p.outputs[m] or p.inputs[m] for m in unit.members):
            ok &= p.fleet.code[idx] != 0
        per_unit.append(idx[ok])
    union = np.unique(np.concatenate(per_unit)) if per_unit else np.zeros(0, dtype=np.int64)
    if len(union) <= MAX_DEVICES:
        return per_unit, None
    f = p.fleet
    keep: set[int] = set()
    if base is not None:
        keep.update(base.dev_of)
    for c in per_unit:
        if len(c) <= 2:
            keep.update(int(d) for d in c)
    f0 = load_fraction(led.used_cpu, led.used_mem, f.cap_cpu, f.cap_mem)
    rank = np.minimum(f.ow_mqtt, f.ow_nats) + 256 * f.serf + W_LOAD * f0
    for d in union[np.lexsort((union, rank[union]))]:
        if len(keep) >= MAX_DEVICES:
            break
        keep.add(int(d))
    chosen = np.array(sorted(keep), dtype=np.int64)
    return [c[np.isin(c, chosen)] for c in per_unit], (len(chosen), len(union))


def _formulate(p: Problem, cands: Sequence[IntArray]) -> tuple[Milp, list[dict[int, int]]]:
    f, led = p.fleet, p.start
    m = Milp()
    x: list[dict[int, int]] = []
    for unit, c in zip(p.units, cands, strict=True):
        cols = {int(d): m.binary(W_TRANSFER * unit.mbps / float(f.bandwidth[d])) for d in c}
        x.append(cols)
        m.row(dict.fromkeys(cols.values(), 1.0), 1.0, 1.0)
    devices = sorted({d for cols in x for d in cols})
    n = len(p.spec.tasks)
    finish = [m.col(0.0, PROC_MS) for _ in range(n)]
    z = m.col(1.0, 0.0)
    for t in range(n):
        m.row({z: 1.0, finish[t]: -1.0}, lo=0.0)
    relay_use: dict[int, dict[int, float]] = {}  # relay device -> {column: Mbit/s it carries}
    for e in range(len(p.edges)):
        _edge(p, m, x, finish, e, relay_use)
    # capacity (relays included), anti-affinity
    for d in sorted(set(devices) | set(relay_use)):
        here = [(u, cols[d]) for u, cols in enumerate(x) if d in cols]
        relays = relay_use.get(d, {})
        m.row(
            {c: p.units[u].cpu for u, c in here} | dict.fromkeys(relays, RELAY_CPU),
            hi=float(led.free_cpu[d]) + 1e-9,
        )
        m.row(
            {c: p.units[u].mem for u, c in here} | dict.fromkeys(relays, RELAY_MEM_MB),
            hi=float(led.free_mem[d]) + 1e-9,
        )
        for kind in sorted({k for u, _ in here for k in p.units[u].acc}):
            m.row({c: float(p.units[u].acc.get(kind, 0)) for u, c in here}, hi=float(led.acc_free(kind)[d]))
    for unit in p.units:
        for other in unit.anti:
            if other > unit.id:
                for d in set(x[unit.id]) & set(x[other]):
                    m.row({x[unit.id][d]: 1.0, x[other][d]: 1.0}, hi=1.0)
    # transfer overflow and load, per device
    for d in sorted(set(devices) | set(relay_use)):
        bw = float(f.bandwidth[d])
        o = m.col(W_OVERLOAD, 0.0)
        row = {o: bw} | {cols[d]: -p.units[u].mbps for u, cols in enumerate(x) if d in cols}
        for col, mbps in relay_use.get(d, {}).items():
            row[col] = -mbps
        m.row(row, lo=-RHO_MAX * bw + float(led.traffic[d]))
    for d in devices:
        _processing(p, m, x, d)
        fd = m.col(W_LOAD, 0.0)
        for used, cap, res in (
            (led.used_cpu[d], f.cap_cpu[d], "cpu"),
            (led.used_mem[d], f.cap_mem[d], "mem"),
        ):
            if cap <= 1e-9:
                continue
            row = {fd: 1.0} | {
                cols[d]: -(p.units[u].cpu if res == "cpu" else p.units[u].mem) / float(cap)
                for u, cols in enumerate(x)
                if d in cols
            }
            m.row(row, lo=float(used) / float(cap))
        for knee, slope in LOAD_KNEES:
            s = m.col(W_LOAD * slope, 0.0)
            m.row({s: 1.0, fd: -1.0}, lo=-knee)
        f0 = float(load_fraction(led.used_cpu[d], led.used_mem[d], f.cap_cpu[d], f.cap_mem[d]))
        m.offset -= W_LOAD * float(g(f0))
    return m, x


def _processing(p: Problem, m: Milp, x: Sequence[dict[int, int]], d: int) -> None:
    """The agent's loop and cores past RHO_MAX, as overflow columns (``costs.processing_cost``)."""
    f, led = p.fleet, p.start
    speed = float(f.speed[d])
    here = [(u, cols[d]) for u, cols in enumerate(x) if d in cols]
    loop = {u: p.units[u].loop for u, _ in here}
    whole = {u: p.units[u].loop + p.units[u].work for u, _ in here}
    for cap, used, demand in (
        (speed, float(led.loop[d]), loop),
        (speed * float(f.cores[d]), float(led.busy[d]), whole),
    ):
        row = {c: -demand[u] for u, c in here if demand[u]}
        if not row:
            continue
        q = m.col(W_OVERLOAD, 0.0)
        m.row({q: cap} | row, lo=-RHO_MAX * cap + used)
        m.offset -= W_OVERLOAD * max(0.0, used / cap - RHO_MAX)


def _edge(
    p: Problem,
    m: Milp,
    x: Sequence[dict[int, int]],
    finish: Sequence[int],
    e: int,
    relay_use: dict[int, dict[int, float]],
) -> None:
    """``F_v >= F_u + PROC + hop``: the hop is split in a producer side y[a, c2] (u on a, v on
    a device of broker code c2) and a consumer side w[c1, b], each the exact product of one
    unit's device with the other's code (transport constraints), so no big-M is needed."""
    f, router = p.fleet, p.router
    t1, t2 = p.edges[e]
    u1, u2 = p.unit_of[t1], p.unit_of[t2]
    nbytes = p.traffic.record_bytes[t1]
    row = {finish[t2]: 1.0, finish[t1]: -1.0}
    if u1 == u2:
        selfhop = router.hops_self(np.array(list(x[u1]), dtype=np.int64), nbytes)
        for c, h in zip(x[u1].values(), selfhop, strict=True):
            row[c] = -float(h)
        m.row(row, lo=PROC_MS)
        return
    codes1 = _by_code(f.code, x[u1])
    codes2 = _by_code(f.code, x[u2])
    mbps = 2 * p.traffic.edge_mbps[e]
    for side, mine, theirs in ((0, x[u1], codes2), (1, x[u2], codes1)):
        per_code: dict[int, dict[int, float]] = {
            c: {col: -1.0 for _, col in cols} for c, cols in theirs.items()
        }
        for d, xc in mine.items():
            link = {xc: -1.0}
            for c_other in theirs:
                c1, c2 = (int(f.code[d]), c_other) if side == 0 else (c_other, int(f.code[d]))
                b1, b2, r_dev, extra = _pair(router, c1, c2, nbytes)
                if not np.isfinite(extra):
                    continue
                weight = f.one_way(d, b1 if side == 0 else b2) + nbytes * float(f.serf[d])
                if side == 0 and r_dev >= 0:
                    weight += extra
                y = m.col(
                    W_TRANSFER * mbps / float(f.bandwidth[r_dev]) if side == 0 and r_dev >= 0 else 0.0,
                    0.0,
                    1.0,
                )
                if side == 0 and r_dev >= 0:
                    relay_use.setdefault(r_dev, {})[y] = mbps
                link[y] = 1.0
                per_code[c_other][y] = 1.0
                row[y] = -weight
            m.row(link, 0.0, 0.0)
        for coefs in per_code.values():
            m.row(coefs, 0.0, 0.0)
    m.row(row, lo=PROC_MS)


def _pair(router: Router, c1: int, c2: int, nbytes: int) -> tuple[int, int, int, float]:
    """(producer's broker, consumer's broker, relay device or -1, the relay's added latency)."""
    common = c1 & c2
    if common:
        b = NATS if common & NATS else MQTT
        return b, b, -1, 0.0
    if not c1 or not c2:
        return MQTT, MQTT, -1, float("inf")
    b1 = NATS if c1 & NATS else MQTT
    b2 = NATS if c2 & NATS else MQTT
    r_dev, extra = router.relay_cost(b1, b2, nbytes)
    return b1, b2, r_dev, extra


def _by_code(code: IntArray, cols: dict[int, int]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for d, c in cols.items():
        out.setdefault(int(code[d]), []).append((d, c))
    return out


def _start(p: Problem, x: Sequence[dict[int, int]], base: Solution) -> dict[int, float] | None:
    """The greedy answer as the solver's starting point (binaries only; HiGHS completes it)."""
    start: dict[int, float] = {}
    for unit, cols in zip(p.units, x, strict=True):
        d = base.dev_of[unit.members[0]]
        if d not in cols:
            return None
        for dev, c in cols.items():
            start[c] = 1.0 if dev == d else 0.0
    return start


def _solution(p: Problem, x: Sequence[dict[int, int]], result: MilpResult) -> Solution | None:
    sol = Solution(dev_of=[-1] * len(p.spec.tasks), ledger=p.start.copy(), strategy="optimal")
    for unit, cols in zip(p.units, x, strict=True):
        chosen = [d for d, c in cols.items() if result.values[c] > 0.5]
        if len(chosen) != 1:
            return None
        assign(p, sol, unit.id, chosen[0], hold_relays=False)
    return sol
