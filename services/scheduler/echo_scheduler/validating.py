"""Validation of a dataflow spec beyond its shape: the DAG, operators and their configs.

Every problem is reported with where it is (``tasks[2].operator``), all at once.
"""

from __future__ import annotations

import networkx as nx

from echo_shared.errors import Problem, SpecError
from echo_shared.models import DataflowSpec, EdgeModel, EdgeSpec
from echo_shared.operators import Kind, Role, config_problems, lookup


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
            if task.resources.worker and not info.can_run_in_worker:
                found.append(
                    Problem(
                        f"tasks[{i}].resources.worker",
                        f"{info.name} cannot run in a worker process: only operators that transform "
                        "records (no broker, file or program of the agent's) can",
                        "worker",
                    )
                )

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
        src_task, dst_task = spec.tasks[index[edge.from_]], spec.tasks[index[edge.to]]
        src, dst = lookup(src_task.operator), lookup(dst_task.operator)
        if src is not None and src.role is Role.sink:
            found.append(Problem(f"edges[{k}].from", f"{src.name} is a sink and has no output", "role"))
        if dst is not None and dst.role is Role.source:
            found.append(Problem(f"edges[{k}].to", f"{dst.name} is a source and takes no input", "role"))
        if src is not None and dst is not None:
            found.extend(
                _pairing(
                    k,
                    edge,
                    src_task.id,
                    src.kinds_for(src_task.config)[1],
                    dst_task.id,
                    dst.kinds_for(dst_task.config)[0],
                )
            )

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
        if info.role in (Role.transform, Role.sink) and graph.in_degree(task.id) == 0:
            found.append(Problem(f"tasks[{i}]", f"{info.name} needs at least one input edge", "unconnected"))
    found.extend(affinity_problems(spec, index))
    return found


def affinity_problems(spec: DataflowSpec, index: dict[str, int]) -> list[Problem]:
    """``colocate_with`` / ``anti_affinity``: references to unknown tasks, and pins that
    contradict each other (co-located tasks pinned apart, or kept apart yet co-located)."""
    found: list[Problem] = []
    parent = {t: t for t in index}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, task in enumerate(spec.tasks):
        where = f"tasks[{i}].placement"
        for kind, refs in (
            ("colocate_with", task.placement.colocate_with),
            ("anti_affinity", task.placement.anti_affinity),
        ):
            for j, ref in enumerate(refs):
                if ref not in index:
                    found.append(Problem(f"{where}.{kind}[{j}]", f"no task with id {ref!r}", "unknown_task"))
                elif kind == "anti_affinity" and ref == task.id:
                    found.append(
                        Problem(f"{where}.{kind}[{j}]", f"task {ref!r} cannot avoid itself", "contradiction")
                    )
                elif kind == "colocate_with" and task.id in parent:
                    parent[find(ref)] = find(task.id)
    if found:
        return found
    pinned: dict[str, tuple[str, int]] = {}  # group -> (device, task index)
    tiers: dict[str, tuple[set[str], int]] = {}
    for i, task in enumerate(spec.tasks):
        if task.id not in index or index[task.id] != i:
            continue
        group = find(task.id)
        c = task.placement
        if c.device:
            prev = pinned.setdefault(group, (c.device, i))
            if prev[0] != c.device:
                other = spec.tasks[prev[1]].id
                found.append(
                    Problem(
                        f"tasks[{i}].placement.device",
                        f"{task.id!r} must share a device with {other!r} (colocate_with), "
                        f"but they are pinned to {c.device} and {prev[0]}",
                        "contradiction",
                    )
                )
        if c.tiers():
            mine = {t.value for t in c.tiers()}
            have, first = tiers.setdefault(group, (mine, i))
            if not have & mine:
                other = spec.tasks[first].id
                found.append(
                    Problem(
                        f"tasks[{i}].placement.tier",
                        f"{task.id!r} must share a device with {other!r} (colocate_with), "
                        f"but no tier is allowed for both "
                        f"({'/'.join(sorted(mine))} vs {'/'.join(sorted(have))})",
                        "contradiction",
                    )
                )
            else:
                tiers[group] = (have & mine, first)
    for i, task in enumerate(spec.tasks):
        for j, ref in enumerate(task.placement.anti_affinity):
            if ref == task.id or ref not in index:
                continue
            where = f"tasks[{i}].placement.anti_affinity[{j}]"
            peer = spec.tasks[index[ref]]
            if find(ref) == find(task.id):
                found.append(
                    Problem(
                        where, f"{task.id!r} and {ref!r} must share a device (colocate_with)", "contradiction"
                    )
                )
            elif task.placement.device and task.placement.device == peer.placement.device:
                found.append(
                    Problem(
                        where,
                        f"{task.id!r} and {ref!r} are both pinned to {task.placement.device}",
                        "contradiction",
                    )
                )
    return found


def _pairing(k: int, edge: EdgeSpec, src: str, produces: Kind, dst: str, consumes: Kind) -> list[Problem]:
    """Records travel on stream and batch edges (converted between the two as needed);
    files only on file edges. Anything else cannot be converted on the edge."""
    out: list[Problem] = []
    file_edge = edge.model is EdgeModel.file
    if produces is Kind.files and not file_edge:
        out.append(
            Problem(
                f"edges[{k}].model",
                f"{src!r} produces files: connect it with model: file "
                f"(a path on one device means nothing on another)",
                "pairing",
            )
        )
    if produces is Kind.records and file_edge:
        out.append(
            Problem(
                f"edges[{k}].model",
                f"{src!r} produces records, not files: use model: stream or batch",
                "pairing",
            )
        )
    if consumes is Kind.files and not file_edge and produces is not Kind.files:
        out.append(
            Problem(
                f"edges[{k}].model",
                f"{dst!r} consumes files: it needs a file edge from a task that produces files",
                "pairing",
            )
        )
    if consumes is Kind.records and file_edge and produces is not Kind.records:
        out.append(Problem(f"edges[{k}].model", f"{dst!r} consumes records, not files", "pairing"))
    return out


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
