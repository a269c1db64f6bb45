"""Validation of a dataflow spec beyond its shape: the DAG, operators and their configs.

Every problem is reported with where it is (``tasks[2].operator``), all at once.
"""

from __future__ import annotations

import networkx as nx

from echo_shared.errors import Problem, SpecError
from echo_shared.models import DataflowSpec
from echo_shared.operators import Role, config_problems, lookup


def problems(spec: DataflowSpec) -> list[Problem]:
    found: list[Problem] = []
    index: dict[str, int] = {}
    for i, task in enumerate(spec.tasks):
        if task.id in index:
            found.append(
                Problem(
                    f"tasks[{i}].id",
                    f"duplicate task id {task.id!r} (also tasks[{index[task.id]}])",
                    "duplicate",
                )
            )
        else:
            index[task.id] = i
        info = lookup(task.operator)
        if info is None:
            found.append(
                Problem(f"tasks[{i}].operator", f"unknown operator {task.operator!r}", "unknown_operator")
            )
        else:
            found.extend(config_problems(info, task.config, f"tasks[{i}].config"))

    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(index)
    seen_edges: dict[tuple[str, str], int] = {}
    for k, edge in enumerate(spec.edges):
        ok = True
        for end, name in (("from", edge.from_), ("to", edge.to)):
            if name not in index:
                found.append(Problem(f"edges[{k}].{end}", f"no task with id {name!r}", "unknown_task"))
                ok = False
        if not ok:
            continue
        if edge.from_ == edge.to:
            found.append(Problem(f"edges[{k}]", f"task {edge.from_!r} is wired to itself", "cycle"))
            continue
        pair = (edge.from_, edge.to)
        if pair in seen_edges:
            found.append(
                Problem(f"edges[{k}]", f"duplicate edge (also edges[{seen_edges[pair]}])", "duplicate")
            )
            continue
        seen_edges[pair] = k
        graph.add_edge(edge.from_, edge.to)
        src = lookup(spec.tasks[index[edge.from_]].operator)
        dst = lookup(spec.tasks[index[edge.to]].operator)
        if src is not None and src.role is Role.sink:
            found.append(Problem(f"edges[{k}].from", f"{src.name} is a sink and has no output", "role"))
        if dst is not None and dst.role is Role.source:
            found.append(Problem(f"edges[{k}].to", f"{dst.name} is a source and takes no input", "role"))

    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = []
    if cycle:
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        first = seen_edges.get((cycle[0][0], cycle[0][1]))
        where = f"edges[{first}]" if first is not None else "edges"
        found.append(Problem(where, f"the dataflow has a cycle: {path}", "cycle"))

    for i, task in enumerate(spec.tasks):
        info = lookup(task.operator)
        if info is None or task.id not in index or index[task.id] != i:
            continue
        if info.role is not Role.source and graph.in_degree(task.id) == 0:
            found.append(Problem(f"tasks[{i}]", f"{info.name} needs at least one input edge", "unconnected"))
    return found


def validate(spec: DataflowSpec) -> None:
    """Raise ``SpecError`` listing every problem, or return if the spec is sound."""
    found = problems(spec)
    if found:
        raise SpecError(found)


def topological_order(spec: DataflowSpec) -> list[str]:
    """Tasks in dependency order; ties broken by their order in the spec (deterministic)."""
    position = {t.id: i for i, t in enumerate(spec.tasks)}
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(position)
    graph.add_edges_from((e.from_, e.to) for e in spec.edges)
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: position[n]))
