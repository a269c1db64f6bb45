"""Moving a few tasks of a large dataflow without placing all of it again.

A migration pins every task but the one it moves. Placed whole, a 10,000-task dataflow
costs its validation, its problem and its explanation (about 1.6 s); yet the greedy
score of the moving task depends only on its neighbourhood. ``cut`` makes that
neighbourhood a dataflow of its own:

- the tasks that move (not pinned), with the tasks co-located with them (transitively);
- their direct producers and consumers, and their anti-affinity partners (either way),
  pinned where they run;
- the edges among these, and for each of these tasks its records/s out: observed
  (``rates``), else estimated over its upstream cone as the whole placement would;
- what every other task of the dataflow holds (CPU, memory, accelerators) on its device,
  added to the other dataflows' reservations, so capacity is checked exactly; and the
  processing it puts on its agent (``costs.processing``) from the observed rates of its
  producers (a task whose producers have no observed rate, as in a dataflow that never ran,
  is not counted: estimating it would walk the whole dataflow).

The placement of that dataflow chooses the same device as the whole one would, with three
approximations, all in the soft terms: a moving task's producers count as finishing at
the same time (the critical path through them is not known without the rest), which
changes nothing for a task with one input; the uplink traffic of tasks outside the
neighbourhood is not in the transfer term's overload part; and the processing of tasks
outside it counts only where observed rates say what it is. ``bench/placement.py``
reports how often the device differs from the whole placement's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from echo_shared.models import DataflowSpec, EdgeSpec, TaskSpec

from .costs import processing, rate_out
from .fleet import Reservation


@dataclass(frozen=True)
class Neighbourhood:
    spec: DataflowSpec  # the moving tasks, their neighbours pinned, the edges among them
    rates: dict[str, float]  # records/s out of every task of ``spec``
    reserved: dict[str, Reservation]  # the other dataflows' and this one's other tasks'
    processing: dict[str, tuple[float, float]]  # (loop, worker) records/s of the other tasks, by device


def cut(
    spec: DataflowSpec,
    pinned: Mapping[str, str],
    rates: Mapping[str, float] | None = None,
    reserved: Mapping[str, Reservation] | None = None,
) -> Neighbourhood:
    """The neighbourhood of the tasks of ``spec`` that ``pinned`` leaves free (see the
    module docstring). ``spec`` is a valid dataflow; every task but the moving ones is in
    ``pinned``."""
    rates = rates or {}
    by_id = {t.id: t for t in spec.tasks}
    together: dict[str, set[str]] = {}
    apart: dict[str, set[str]] = {}
    for t in spec.tasks:
        c = t.placement
        for other in c.colocate_with:
            together.setdefault(t.id, set()).add(other)
            together.setdefault(other, set()).add(t.id)
        for other in c.anti_affinity:
            apart.setdefault(t.id, set()).add(other)
            apart.setdefault(other, set()).add(t.id)

    core: set[str] = set()
    stack = [t.id for t in spec.tasks if t.id not in pinned]
    while stack:
        tid = stack.pop()
        if tid not in core:
            core.add(tid)
            stack.extend(together.get(tid, ()))

    producers: dict[str, list[str]] = {}
    kept: list[EdgeSpec] = []
    around: set[str] = set()
    for e in spec.edges:
        producers.setdefault(e.to, []).append(e.from_)
        if e.from_ in core or e.to in core:
            kept.append(e)
            around.add(e.to if e.from_ in core else e.from_)
    for tid in core:
        around |= apart.get(tid, set())
    around -= core
    members = core | around

    out_rates = _rates(by_id, producers, members, rates)
    held = _held(spec.tasks, members, pinned, reserved or {})
    busy = _processing(spec.tasks, members, pinned, producers, rates)

    tasks: list[TaskSpec] = []
    for t in spec.tasks:
        if t.id in members:
            tasks.append(_restricted(t, members, pinned.get(t.id)))
    return Neighbourhood(
        spec=spec.model_copy(update={"tasks": tasks, "edges": kept}),
        rates=out_rates,
        reserved=held,
        processing=busy,
    )


def _restricted(t: TaskSpec, members: set[str], device: str | None) -> TaskSpec:
    """``t`` with its co-location and anti-affinity kept to ``members``, pinned to ``device``."""
    c = t.placement
    update: dict[str, object] = {}
    if device is not None:
        update["device"] = device
    if any(o not in members for o in c.colocate_with):
        update["colocate_with"] = [o for o in c.colocate_with if o in members]
    if any(o not in members for o in c.anti_affinity):
        update["anti_affinity"] = [o for o in c.anti_affinity if o in members]
    if not update:
        return t
    return t.model_copy(update={"placement": c.model_copy(update=update)})


def _rates(
    by_id: Mapping[str, TaskSpec],
    producers: Mapping[str, Sequence[str]],
    wanted: set[str],
    rates: Mapping[str, float],
) -> dict[str, float]:
    """Records/s out of each task of ``wanted``: walks only the upstream cones it needs (an
    observed rate ends the walk), in dependency order, without recursion."""
    known: dict[str, float] = {}
    for root in sorted(wanted):
        stack = [root]
        while stack:
            tid = stack[-1]
            if tid in known:
                stack.pop()
                continue
            ins = producers.get(tid, ())
            if tid in rates or not ins:
                known[tid] = rate_out(by_id[tid], rates, None if not ins else ())
                stack.pop()
                continue
            missing = [u for u in ins if u not in known]
            if missing:
                stack.extend(missing)
                continue
            known[tid] = rate_out(by_id[tid], rates, [known[u] for u in ins])
            stack.pop()
    return {tid: known[tid] for tid in wanted}


def _processing(
    tasks: Sequence[TaskSpec],
    members: set[str],
    pinned: Mapping[str, str],
    producers: Mapping[str, Sequence[str]],
    rates: Mapping[str, float],
) -> dict[str, tuple[float, float]]:
    """What every task outside ``members`` puts on its agent, from observed rates."""
    out: dict[str, tuple[float, float]] = {}
    if not rates:
        return out
    for t in tasks:
        if t.id in members:
            continue
        ins = producers.get(t.id)
        if ins:
            got = [rates.get(u) for u in ins]
            if any(r is None for r in got):
                continue
            records = float(sum(r for r in got if r is not None))
        elif t.id in rates:
            records = float(rates[t.id])
        else:
            continue
        on_loop, on_worker = processing(t, records)
        dev = pinned[t.id]
        was = out.get(dev, (0.0, 0.0))
        out[dev] = (was[0] + on_loop, was[1] + on_worker)
    return out


def _held(
    tasks: Sequence[TaskSpec],
    members: set[str],
    pinned: Mapping[str, str],
    reserved: Mapping[str, Reservation],
) -> dict[str, Reservation]:
    """``reserved`` plus what every task outside ``members`` holds on its device."""
    cpu: dict[str, float] = {}
    mem: dict[str, float] = {}
    acc: dict[str, dict[str, int]] = {}
    for dev, res in reserved.items():
        cpu[dev], mem[dev] = float(res[0]), float(res[1])
        if len(res) == 3:
            acc[dev] = dict(res[2])
    for t in tasks:
        if t.id in members:
            continue
        dev, r = pinned[t.id], t.resources
        cpu[dev] = cpu.get(dev, 0.0) + r.cpu
        mem[dev] = mem.get(dev, 0.0) + r.memory_mb
        wants = t.placement.accelerators
        if wants:
            mine = acc.setdefault(dev, {})
            for k, n in wants.items():
                mine[k] = mine.get(k, 0) + n
    return {dev: (cpu[dev], mem[dev], acc[dev]) if dev in acc else (cpu[dev], mem[dev]) for dev in cpu}


__all__ = ["Neighbourhood", "cut"]
