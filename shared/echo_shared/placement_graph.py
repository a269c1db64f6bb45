"""The dataflow as deployed: the user's spec plus the relay tasks its placement added.

A relay forwards one edge between two brokers when no broker serves both ends (an edge
device that reaches only MQTT, a cloud device that reaches only NATS). The scheduler
decides relays (``Placement.relays``); the master deploys the ``effective_spec``: the relay
as a ``core.relay`` task pinned to its device, the edge split in two legs of the same model.
"""

from __future__ import annotations

from .models import DataflowSpec, EdgeSpec, Placement, PlacementConstraints, TaskSpec

RELAY_OPERATOR = "core.relay"


def relay_id(spec: DataflowSpec, edge_index: int) -> str:
    """A task id for the relay of ``spec.edges[edge_index]``, unique in the spec."""
    taken = {t.id for t in spec.tasks}
    rid = f"relay-{edge_index}"
    while rid in taken:
        rid += "x"
    return rid


def effective_spec(spec: DataflowSpec, placement: Placement | None) -> DataflowSpec:
    """``spec`` with every relay of ``placement`` inserted into its edge."""
    if placement is None or not placement.relays:
        return spec
    relays = {(r.from_task, r.to_task): r for r in placement.relays}
    tasks = list(spec.tasks)
    edges: list[EdgeSpec] = []
    for e in spec.edges:
        r = relays.get((e.from_, e.to))
        if r is None:
            edges.append(e)
            continue
        tasks.append(
            TaskSpec(id=r.id, operator=RELAY_OPERATOR, placement=PlacementConstraints(device=r.device))
        )
        edges.append(e.model_copy(update={"to": r.id}))
        edges.append(e.model_copy(update={"from_": r.id}))
    return spec.model_copy(update={"tasks": tasks, "edges": edges})
