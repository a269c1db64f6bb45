"""``greedy`` (the default): one pass in dependency order; each unit goes to its cheapest
feasible device by the local score of ``scoring``, ties to a device hosting an upstream
task, then to the lowest id.

Scale: a unit's eligible devices (from the fleet's indexes by tier, label, stream, runtime,
device) are scored in numpy chunks in order of their latency to the brokers, and the
search stops when no further device can beat the best (branch and bound), so a unit
costs O(the devices that could win) array work: 1,000 tasks x 1,000 devices take well
under a second, 10,000 x 10,000 a few seconds (``bench/placement.py``).
"""

from __future__ import annotations

import numpy as np

from .problem import Problem
from .scoring import best_scores, choose, diagnose
from .solution import Decision, Solution, assign, finish_of


def solve(p: Problem) -> Solution:
    n = len(p.spec.tasks)
    sol = Solution(dev_of=[-1] * n, ledger=p.start.copy(), strategy="greedy")
    # a unit pinned to one device holds it from the start: a unit placed before it in
    # dependency order sees that device's load (and room) with it, not without
    held = {u.id: int(u.idx[0]) for u in p.units if u.pinned and len(u.idx) == 1}
    for uid, d in held.items():
        u = p.units[uid]
        sol.ledger.take(d, u.cpu, u.mem, u.acc, u.mbps, u.loop, u.work)
    finish = [0.0] * n
    for t in p.order:
        if sol.dev_of[t] < 0:
            unit = p.units[p.unit_of[t]]
            d = held.pop(unit.id, -1)
            if d >= 0:  # scored and assigned as any unit: its hold goes back first
                sol.ledger.give(d, unit.cpu, unit.mem, unit.acc, unit.mbps, unit.loop, unit.work)
            s = best_scores(p, unit, sol.ledger, sol.dev_of, finish)
            best, second = choose(s)
            if best < 0:
                raise diagnose(p, unit, sol.ledger, sol.dev_of)
            device = int(s.idx[best])
            # every eligible device scored: count those that could take it; else (bounded
            # search) the statically eligible ones
            scored_all = len(s.idx) == len(unit.idx)
            feasible = int(np.isfinite(s.total).sum()) if scored_all else len(unit.idx)
            sol.decisions[unit.id] = Decision(
                device=device,
                feasible=feasible,
                terms=s.terms(best),
                runner_up=int(s.idx[second]) if second is not None else None,
                runner_terms=s.terms(second) if second is not None else None,
                note="lowest cost",
            )
            assign(p, sol, unit.id, device)
        finish[t] = finish_of(p, t, sol.dev_of, finish)
    return sol
