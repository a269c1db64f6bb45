"""Agents use every core: the ETL example on one agent, its stages in the agent's event loop
and then in worker processes (``resources.worker``).

Every task of ``examples/etl/dataflow.yaml`` is pinned to ``fog-1`` (a 2-core device), so one
agent runs the whole chain: file source -> parse -> range -> bloom -> interpolate -> join ->
annotate -> senml -> publish / sink. Two runs over the same input (the 1,000-trip sample
repeated; ``rate: 0``, as fast as it goes), measured as ``etl_pipeline`` does (the sink file
tailed, ``input_records_per_s`` from the ``seq`` progress at the sink):

1. ``loop``: the example as shipped, every stage in the agent's event loop: one core at most;
2. ``workers``: the seven record transforms (``etl.*``) with ``resources.worker: true``, each
   in a worker process of its own; the loop keeps the channels, the source and the sinks.

Each run reports the agent's CPU including its worker processes (``agent_tree_cores``: CPU
seconds / wall seconds, above 1.0 only if it used more than one core) and exactly-once at
the sink. ``ratio`` = workers / loop input records/s. On this 2-core machine the broker and
the other services share the same two cores, and a worker adds a round trip per micro-batch
(JSON frames over a pipe): workers pay off for operators whose per-record work outweighs
that, and on devices with cores to spare. What placement assumes (``capacity.records_per_s``,
the operators' cost per record) is reported beside: the loop share it predicts at the
measured rate.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from common import Stack, log
from etl_pipeline import REPEAT_FULL, REPEAT_QUICK, exactly_once, public, run_pipeline, throughput

DEVICE = "fog-1"


def pin_all(spec: dict[str, Any]) -> None:
    for task in spec["tasks"]:
        task["placement"] = {"device": DEVICE}


def in_workers(spec: dict[str, Any]) -> None:
    pin_all(spec)
    for task in spec["tasks"]:
        if task["operator"].startswith("etl."):
            task.setdefault("resources", {})["worker"] = True


def tree_cpu(p: psutil.Process) -> float:
    """CPU seconds of the agent and its children (reaped ones included)."""
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for c in p.children(recursive=True):
        try:
            ct = c.cpu_times()
            total += ct.user + ct.system
        except psutil.Error:
            pass
    return float(total)


def one(stack: Stack, label: str, lines: int, edit: Any) -> dict[str, Any]:
    agent = psutil.Process(stack.platform.agents[DEVICE].pid)
    c0, t0 = tree_cpu(agent), time.perf_counter()
    r = run_pipeline(stack, label, lines, 0.0, timeout=lines / 100 + 60.0, edit=edit)
    wall = time.perf_counter() - t0
    cpu = tree_cpu(agent) - c0
    tput = throughput(r)
    out = {
        "error": r["error"],
        "exactly_once": exactly_once(r),
        "input_records_per_s": tput.get("input_records_per_s"),
        "post_to_completed_s": r["post_to_completed_s"],
        "agent_tree_cpu_s": round(cpu, 2),
        "agent_tree_cores": round(cpu / wall, 2) if wall > 0 else None,
        "devices": sorted({t["device"] for t in r["tasks"].values()}),
        "sink": r["sink"],
        "processes": public(r)["processes"],
    }
    log(f"agent_cores {label}: {out['input_records_per_s']} lines/s, {out['agent_tree_cores']} cores")
    return out


def predicted(stack: Stack, rate: float | None) -> dict[str, Any]:
    """What placement assumes of this agent (its declared speed) at the measured rate."""
    r = stack.api.http.get(f"/api/v1/devices/{DEVICE}")
    speed = r.json().get("capacity", {}).get("records_per_s") if r.status_code == 200 else None
    return {"records_per_s_declared": speed, "rate": rate}


def run(stack: Stack, quick: bool) -> dict[str, Any]:
    lines = 1000 * (REPEAT_QUICK if quick else REPEAT_FULL // 5)
    loop = one(stack, "loop", lines, pin_all)
    workers = one(stack, "workers", lines, in_workers)
    a, b = loop["input_records_per_s"], workers["input_records_per_s"]
    return {
        "device": DEVICE,
        "input_lines": lines,
        "loop": loop,
        "workers": workers,
        "ratio_workers_to_loop": round(b / a, 2) if a and b else None,
        "placement_assumes": predicted(stack, a),
        "exactly_once": loop["exactly_once"] and workers["exactly_once"],
    }
