"""Agent footprint: resident memory of an agent idle, and running 10 stream tasks.

Measured on the shared stack before any other benchmark ran: the resident set (RSS) of
every agent process, idle (registered, heartbeating, no task). Then a 10-task stream
dataflow on fog-1 alone (``io.generate`` at 200 records/s -> 8 x ``core.passthrough`` ->
``io.file_sink``, 9 stream edges over its data session): fog-1's RSS sampled for
``SAMPLE_S`` once every task runs, its peak reported, with and without the worker processes
it started (user operators run in those; RSS of several processes counts their shared
pages more than once, so the sum is an upper bound). Targets (issue 11): idle <= 60 MB,
<= 100 MB with 10 stream tasks. What an agent imports at start is what it weighs: runtimes
(ONNX Runtime, numpy), HTTP and Redis clients load when first used.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from common import Stack, log

MIB = 1 << 20
IDLE_TARGET_MB = 60
TASKS_TARGET_MB = 100
DEVICE = "fog-1"
SAMPLE_S = 5.0


def rss(pid: int) -> tuple[float, float]:
    """(the process's RSS, with its children's) in MiB."""
    p = psutil.Process(pid)
    own = p.memory_info().rss
    total = own
    for c in p.children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            continue
    return own / MIB, total / MIB


def spec(out: Path) -> dict[str, Any]:
    relays = [f"pass-{i}" for i in range(1, 9)]
    chain = ["gen", *relays, "sink"]
    tasks: list[dict[str, Any]] = [
        {
            "id": "gen",
            "operator": "io.generate",
            "config": {"count": 1_000_000, "rate": 200},
            "placement": {"device": DEVICE},
        },
        *({"id": r, "operator": "core.passthrough", "placement": {"device": DEVICE}} for r in relays),
        {
            "id": "sink",
            "operator": "io.file_sink",
            "config": {"path": str(out)},
            "placement": {"device": DEVICE},
        },
    ]
    return {
        "name": "footprint",
        "tasks": tasks,
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(chain)],
    }


def run(stack: Stack, quick: bool) -> dict[str, Any]:
    idle = {}
    for name, proc in stack.platform.agents.items():
        own, total = rss(proc.pid)
        idle[name] = {"rss_mb": round(own, 1), "with_children_mb": round(total, 1)}
    log(f"idle agents: {idle}")
    out = Path(tempfile.mkdtemp(prefix="echo-footprint-")) / "out.jsonl"
    df_id = stack.api.submit(spec(out))
    stack.api.wait_state(df_id, "running", timeout=60)
    pid = stack.platform.agents[DEVICE].pid
    peak_own = peak_total = 0.0
    end = time.monotonic() + SAMPLE_S
    while time.monotonic() < end:
        own, total = rss(pid)
        peak_own, peak_total = max(peak_own, own), max(peak_total, total)
        time.sleep(0.2)  # sampling memory over a window, not waiting for a condition
    flowing = out.exists() and out.stat().st_size > 0
    stack.api.http.delete(f"/api/v1/dataflows/{df_id}")
    stack.api.wait_state(df_id, "stopped", timeout=60)
    worst_idle = max(v["rss_mb"] for v in idle.values())
    return {
        "idle": idle,
        "idle_rss_mb_max": worst_idle,
        "idle_target_mb": IDLE_TARGET_MB,
        "with_10_stream_tasks": {
            "device": DEVICE,
            "rss_mb_peak": round(peak_own, 1),
            "with_children_mb_peak": round(peak_total, 1),
            "records_flowing": flowing,
        },
        "tasks_target_mb": TASKS_TARGET_MB,
        "met": worst_idle <= IDLE_TARGET_MB and peak_total <= TASKS_TARGET_MB and flowing,
    }
