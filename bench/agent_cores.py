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

Then the same comparison on a pipeline of heavy operators: ``io.generate`` (rate 0) -> two
``core.map`` stages computing 24 string expressions each (~80-150 us a record, ten times
forwarding one) -> ``io.file_sink``, all on fog-1, the maps in the loop and then in workers.

Each run reports the agent's CPU including its worker processes (``agent_tree_cores``: CPU
seconds / wall seconds, above 1.0 only if it used more than one core) and exactly-once at
the sink. ``ratio`` = workers / loop input records/s. On this 2-core machine the broker and
the other services share the same two cores, and a worker adds a round trip per micro-batch
(JSON frames over a pipe): workers pay off for operators whose per-record work outweighs
that, and on devices with cores to spare. What placement assumes (``capacity.records_per_s``,
the operators' cost per record) is reported beside: the device's declared speed.
"""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from common import BenchApiError, Stack, log
from etl_pipeline import (
    REPEAT_FULL,
    REPEAT_QUICK,
    SinkTail,
    exactly_once,
    public,
    run_pipeline,
    throughput,
)

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


HEAVY_EXPRESSIONS = {
    f"f{i}": f'upper(replace(str(seq * {i + 3}) + "-" + str(seq % {i + 7}), "1", "x"))' for i in range(24)
}


def heavy_spec(out: Path, count: int, worker: bool) -> dict[str, Any]:
    pin = {"device": DEVICE}
    maps = [
        {
            "id": f"map{i}",
            "operator": "core.map",
            "config": {"set": HEAVY_EXPRESSIONS, **({"keep": ["seq"]} if i == 2 else {})},
            "placement": pin,
            "resources": {"worker": worker},
        }
        for i in (1, 2)
    ]
    tasks = [
        {"id": "gen", "operator": "io.generate", "config": {"count": count, "rate": 0}, "placement": pin},
        *maps,
        {"id": "sink", "operator": "io.file_sink", "config": {"path": str(out)}, "placement": pin},
    ]
    ids = [t["id"] for t in tasks]
    return {
        "name": f"cores-heavy-{uuid.uuid4().hex[:6]}",
        "tasks": tasks,
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(ids)],
    }


def heavy(stack: Stack, label: str, count: int, worker: bool) -> dict[str, Any]:
    agent = psutil.Process(stack.platform.agents[DEVICE].pid)
    out = stack.workdir / f"heavy-{label}.jsonl"
    c0, t0 = tree_cpu(agent), time.perf_counter()
    error = None
    with SinkTail(out) as tail:
        df_id = stack.api.submit(heavy_spec(out, count, worker))
        try:
            stack.api.wait_state(df_id, {"completed"}, timeout=count / 500 + 60)
        except BenchApiError as e:
            error = str(e)[:300]
            stack.api.delete(df_id)
        tail.wait(count, 10)
    wall = time.perf_counter() - t0
    cpu = tree_cpu(agent) - c0
    seqs = [s for _, s in tail.arrivals]
    span = tail.arrivals[-1][0] - tail.arrivals[0][0] if len(seqs) > 1 else 0.0
    result = {
        "error": error,
        "exactly_once": sorted(seqs) == list(range(count)),
        "records_per_s": round((len(seqs) - 1) / span, 1) if span > 0 else None,
        "post_to_completed_s": round(wall, 3),
        "agent_tree_cpu_s": round(cpu, 2),
        "agent_tree_cores": round(cpu / wall, 2) if wall > 0 else None,
    }
    out.unlink(missing_ok=True)
    log(f"agent_cores heavy {label}: {result['records_per_s']} records/s, {result['agent_tree_cores']} cores")
    return result


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
    count = 4_000 if quick else 20_000
    heavy_loop = heavy(stack, "loop", count, worker=False)
    heavy_workers = heavy(stack, "workers", count, worker=True)
    ha, hb = heavy_loop["records_per_s"], heavy_workers["records_per_s"]
    return {
        "device": DEVICE,
        "input_lines": lines,
        "loop": loop,
        "workers": workers,
        "ratio_workers_to_loop": round(b / a, 2) if a and b else None,
        "heavy": {
            "records": count,
            "loop": heavy_loop,
            "workers": heavy_workers,
            "ratio_workers_to_loop": round(hb / ha, 2) if ha and hb else None,
        },
        "placement_assumes": predicted(stack, a),
        "exactly_once": all(r["exactly_once"] for r in (loop, workers, heavy_loop, heavy_workers)),
    }
