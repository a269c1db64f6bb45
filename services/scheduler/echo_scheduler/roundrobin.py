"""``round-robin``: the original ECHO baseline. Tasks pinned by device or input stream
stay pinned (the lowest-id device that satisfies them); every other unit goes to the
next device, in a fixed cyclic order (by id), that satisfies its hard constraints
(capacity, affinity and routes included), and the cycle moves on past it. Costs are
computed for the explanation but never decide."""

from __future__ import annotations

import numpy as np

from .problem import Problem
from .scoring import diagnose, score_unit
from .solution import Decision, Solution, assign, finish_of


def solve(p: Problem) -> Solution:
    n = len(p.spec.tasks)
    sol = Solution(dev_of=[-1] * n, ledger=p.start.copy(), strategy="round-robin")
    finish = [0.0] * n
    pointer = 0
    for t in p.order:
        if sol.dev_of[t] < 0:
            unit = p.units[p.unit_of[t]]
            s = score_unit(p, unit, sol.ledger, sol.dev_of, finish)
            ok = np.flatnonzero(np.isfinite(s.total))
            if len(ok) == 0:
                raise diagnose(p, unit, sol.ledger, sol.dev_of)
            devices = s.idx[ok]
            if unit.pinned:
                k, note = 0, "pinned"
            else:
                k = int(np.searchsorted(devices, pointer)) % len(devices)
                pointer = int(devices[k]) + 1
                note = "next in round-robin order"
            nxt = (k + 1) % len(devices) if len(devices) > 1 else None
            sol.decisions[unit.id] = Decision(
                device=int(devices[k]),
                feasible=len(devices),
                terms=s.terms(int(ok[k])),
                runner_up=int(devices[nxt]) if nxt is not None else None,
                runner_terms=s.terms(int(ok[nxt])) if nxt is not None else None,
                note=note,
            )
            assign(p, sol, unit.id, int(devices[k]))
        finish[t] = finish_of(p, t, sol.dev_of, finish)
    return sol
