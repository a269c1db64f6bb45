"""A complete placement's channels, relays and objective: what every strategy is judged by."""

from __future__ import annotations

from dataclasses import dataclass

from echo_shared.names import Names

from .channels import RELAY_CPU, RELAY_MEM_MB, Selection, select
from .costs import Costs, evaluate
from .fleet import Ledger
from .problem import Problem
from .solution import Solution


@dataclass
class Outcome:
    selection: Selection
    costs: Costs
    ledger: Ledger  # the tasks' resources (relays aside)


def assess(p: Problem, sol: Solution, names: Names | None = None) -> Outcome:
    """Choose every edge's channel (relays take capacity from a copy of the ledger) and
    evaluate the objective; ``RouteError`` if a relay cannot be found."""
    tasks_ledger = sol.ledger.copy()
    for r in sol.holds:
        tasks_ledger.give(r, RELAY_CPU, RELAY_MEM_MB)
    relays_ledger = tasks_ledger.copy()
    sel = select(
        p.dataflow_id,
        p.spec,
        p.router,
        p.edges,
        p.edge_bytes,
        p.traffic.edge_mbps,
        sol.dev_of,
        relays_ledger,
        names or Names(),
    )
    costs = evaluate(p.fleet, p.start, tasks_ledger, sel.traffic, p.order, p.edges, p.inputs, sel.hop_ms)
    return Outcome(sel, costs, tasks_ledger)
