"""Explanations: for each task its device, the constraints it satisfied there, its cost
terms and the runner-up device with why it lost; for each edge its channel and why."""

from __future__ import annotations

import numpy as np

from echo_shared.models import Placement, TaskPlacement

from .constraints import satisfied
from .costs import busy_rho, load_fraction, loop_rho
from .outcome import Outcome
from .problem import Problem, Unit
from .scoring import score_unit
from .solution import Decision, Solution, finish_of

TERM_NAMES = {"latency_ms": "latency", "depart_ms": "departure", "transfer": "transfer", "load": "load"}


def posthoc_decisions(p: Problem, sol: Solution, note: str) -> None:
    """Decisions for a solution made elsewhere (the ILP): each unit's local cost on its device
    and on the best other device, with every other unit where it is."""
    n = len(p.spec.tasks)
    finish = [0.0] * n
    for t in p.order:
        finish[t] = finish_of(p, t, sol.dev_of, finish)
    for unit in p.units:
        d = sol.dev_of[unit.members[0]]
        ledger = sol.ledger.copy()
        ledger.give(d, unit.cpu, unit.mem, unit.acc, unit.mbps, unit.loop, unit.work)
        dev_of = list(sol.dev_of)
        for m in unit.members:
            dev_of[m] = -1
        s = score_unit(p, unit, ledger, dev_of, finish)
        pos = np.flatnonzero(s.idx == d)
        mine = int(pos[0]) if len(pos) else -1
        total = s.total.copy()
        if mine >= 0:
            total[mine] = np.inf
        other = int(np.argmin(total)) if len(total) else -1
        has_other = other >= 0 and bool(np.isfinite(total[other]))
        sol.decisions[unit.id] = Decision(
            device=d,
            feasible=int(np.isfinite(s.total).sum()),
            terms=s.terms(mine) if mine >= 0 else {},
            runner_up=int(s.idx[other]) if has_other else None,
            runner_terms=s.terms(other) if has_other else None,
            note=note,
        )


def _cost_diff(dec: Decision) -> tuple[float, str]:
    mine, theirs = dec.terms, dec.runner_terms or {}
    deltas = {k: theirs.get(k, 0.0) - mine.get(k, 0.0) for k in TERM_NAMES}
    total = sum(deltas.values())
    parts = [f"{TERM_NAMES[k]} {v:+.2f}" for k, v in deltas.items() if abs(v) >= 0.005]
    return total, ", ".join(parts) or "same cost"


def _runner_up(p: Problem, dec: Decision | None, strategy: str) -> tuple[str | None, str]:
    if dec is None or dec.runner_up is None:
        return None, "no other device could host it"
    rid = p.fleet.devices[dec.runner_up].id
    diff, parts = _cost_diff(dec)
    if dec.note == "next in round-robin order" or dec.note == "pinned":
        return rid, f"next in round-robin order ({parts})"
    if diff >= 0:
        lost = "a tie, lost on id" if diff < 1e-9 else f"costs {diff:.2f} more"
        return rid, f"{lost} ({parts})"
    return rid, f"cheaper alone by {-diff:.2f} ({parts}) but worse for the whole dataflow ({strategy})"


def _reason(p: Problem, t: int, unit: Unit, dec: Decision | None, device: str, extra: list[str]) -> str:
    r = unit.reqs[unit.members.index(t)]
    dev = p.fleet.devices[p.fleet.index[device]]
    parts: list[str] = []
    if r.device:
        parts.append(f"pinned to device {r.device}")
    if r.stream:
        parts.append(f"hosts input stream {r.stream}")
    if r.tiers:
        parts.append(f"tier {dev.tier.value}")
    if r.labels:
        parts.append("labels " + ",".join(f"{k}={v}" for k, v in r.labels))
    if r.accelerators:
        parts.append("accelerators " + ",".join(f"{k}x{n}" for k, n in r.accelerators))
    parts += extra
    if dec is not None and unit.members[0] == t:
        if dec.note == "lowest cost":
            parts.append(
                f"lowest cost of {dec.feasible} eligible devices"
                if dec.feasible > 1
                else "the only eligible device"
            )
        elif dec.note:
            parts.append(f"{dec.note} ({dec.feasible} feasible)" if dec.feasible > 1 else dec.note)
    return f"{device}: " + "; ".join(parts or ["the only eligible device"])


def placement(p: Problem, sol: Solution, out: Outcome) -> Placement:
    fleet, spec = p.fleet, p.spec
    load = load_fraction(out.ledger.used_cpu, out.ledger.used_mem, fleet.cap_cpu, fleet.cap_mem)
    util = out.selection.traffic / fleet.bandwidth
    loop_util, busy_util = loop_rho(fleet, out.ledger), busy_rho(fleet, out.ledger)
    anti_of: dict[str, list[str]] = {}
    for o in spec.tasks:
        for x in o.placement.anti_affinity:
            anti_of.setdefault(x, []).append(o.id)
    tasks: list[TaskPlacement] = []
    for t, task in enumerate(spec.tasks):
        d = sol.dev_of[t]
        device = fleet.devices[d].id
        unit = p.units[p.unit_of[t]]
        dec = sol.decisions.get(unit.id)
        extra: list[str] = []
        mates = [spec.tasks[m].id for m in unit.members if m != t]
        if mates:
            extra.append("co-located with " + ", ".join(mates))
        apart = [*task.placement.anti_affinity, *anti_of.get(task.id, [])]
        if apart:
            extra.append("apart from " + ", ".join(sorted(set(apart))))
        ups = [spec.tasks[p.edges[e][0]].id for e in p.inputs[t] if sol.dev_of[p.edges[e][0]] == d]
        if ups and not set(ups) <= set(mates):
            extra.append("co-located with its upstream task " + ", ".join(ups))
        if unit.members[0] == t:
            runner, why = _runner_up(p, dec, sol.strategy)
        else:
            runner, why = None, f"co-located with {spec.tasks[unit.members[0]].id}"
        costs = {
            "finish_ms": out.costs.finish_ms[t],
            "channel_ms": out.costs.channel_ms[t],
            "uplink_mbps": p.traffic.task_mbps[t],
            "uplink_util": float(util[d]),
            "device_load": float(load[d]),
            "processing": p.traffic.loop[t] + p.traffic.work[t],
            "agent_loop_util": float(loop_util[d]),
            "agent_cores_util": float(busy_util[d]),
        }
        if dec is not None and unit.members[0] == t:
            costs.update({f"local_{k}": v for k, v in dec.terms.items()})
        tasks.append(
            TaskPlacement(
                task=task.id,
                device=device,
                reason=_reason(p, t, unit, dec, device, extra),
                satisfied=satisfied(
                    [unit.reqs[unit.members.index(t)]],
                    fleet.devices[d],
                    [x for x in extra if not x.startswith("co-located with its")],
                ),
                costs={k: round(v, 6) for k, v in costs.items()},
                runner_up=runner,
                runner_up_reason=why,
            )
        )
    return Placement(
        tasks=tasks,
        channels=out.selection.channels,
        relays=out.selection.relays,
        strategy=sol.strategy,
        cost=out.costs.as_dict(),
    )
