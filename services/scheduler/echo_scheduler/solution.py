"""What a strategy returns: a device per task, the resources it took, and per unit the
decision (chosen device, its local cost terms, the runner-up and its terms)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .channels import RELAY_CPU, RELAY_MEM_MB, best_relay, needs_relay, relay_brokers
from .costs import PROC_MS
from .fleet import Ledger
from .problem import Problem


@dataclass
class Decision:
    device: int
    feasible: int  # how many devices could host the unit
    terms: dict[str, float]
    runner_up: int | None = None
    runner_terms: dict[str, float] | None = None
    note: str = ""  # how the strategy chose (for the reason)


@dataclass
class Solution:
    dev_of: list[int]
    ledger: Ledger  # the start ledger plus every unit's resources and traffic
    strategy: str
    decisions: dict[int, Decision] = field(default_factory=dict)  # by unit id
    holds: list[int] = field(default_factory=list)  # devices holding room for a relay meanwhile


def finish_of(p: Problem, t: int, dev_of: Sequence[int], finish: Sequence[float]) -> float:
    """``F(t)`` with every input placed (relays estimated, their capacity aside)."""
    worst = 0.0
    for e in p.inputs[t]:
        u = p.edges[e][0]
        worst = max(worst, finish[u] + p.router.hop(dev_of[u], dev_of[t], p.traffic.record_bytes[u]))
    return PROC_MS + worst


def assign(p: Problem, sol: Solution, unit_id: int, device: int, *, hold_relays: bool = True) -> None:
    """Put a unit on ``device``; for each edge to a placed task that needs a relay, hold the
    room of one on the best relay device until the channels are chosen (``outcome``)."""
    unit = p.units[unit_id]
    for m in unit.members:
        sol.dev_of[m] = device
    sol.ledger.take(device, unit.cpu, unit.mem, unit.acc, unit.mbps, unit.loop, unit.work)
    if not hold_relays or not len(p.router.relays):
        return
    for m in unit.members:
        for e in p.inputs[m] + p.outputs[m]:
            u, v = p.edges[e]
            other = u if v == m else v
            d_other = sol.dev_of[other]
            if d_other < 0 or p.unit_of[other] == unit_id or not needs_relay(p.fleet, d_other, device):
                continue
            a, b = (d_other, device) if u == other else (device, d_other)
            b1, b2 = relay_brokers(p.fleet, a, b)
            r = best_relay(p.router, sol.ledger, b1, b2, p.traffic.record_bytes[u])
            if r >= 0:
                sol.ledger.take(r, RELAY_CPU, RELAY_MEM_MB)
                sol.holds.append(r)
