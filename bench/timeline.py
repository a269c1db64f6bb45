"""Where a deployment's time goes, read from the platform's own logs.

The master logs every dataflow state change (``dataflow {id}: a -> b``) and the agents
log every task state change (``task {df}/{task} gen {n}: deploying``); all processes run
on this machine, so their wall-clock timestamps (ms resolution) share one clock with the
dataflow's ``created_at``. For one dataflow deployed wave by wave (today: one wave)
this gives:

- ``schedule``: ``created_at`` -> ``scheduled`` (scheduler request, placement stored);
- ``level{k}``: the first task of level k starts deploying on its agent -> the last one
  runs (agent-side work: MQTT session, subscribe, operator open);
- ``handoff{k}``: ``scheduled`` (k = 0) or the last ``running`` of level k-1 -> the first
  ``deploying`` of level k (ack back to the master, status applied to Redis, next
  commands built, sent and received);
- ``finalize``: the last task running -> the dataflow ``running`` in Redis.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from common import percentile

_DF = re.compile(r"^dataflow (df-[0-9a-f]+): (\w+) -> (\w+)")
_TASK = re.compile(r"^task (df-[0-9a-f]+)/([\w.-]+) gen \d+: (\w+)")


def _ts(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def read_events(logs: Path) -> dict[str, list[tuple[float, str, str]]]:
    """Per dataflow: (time, subject, state) with subject ``df`` or a task id, in time order."""
    out: dict[str, list[tuple[float, str, str]]] = {}
    for path in logs.glob("*.log"):
        for line in path.read_bytes().splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            msg = str(obj.get("msg", ""))
            if m := _DF.match(msg):
                out.setdefault(m.group(1), []).append((_ts(obj["ts"]), "df", m.group(3)))
            elif m := _TASK.match(msg):
                out.setdefault(m.group(1), []).append((_ts(obj["ts"]), m.group(2), m.group(3)))
    for events in out.values():
        events.sort()
    return out


def phases(
    events: list[tuple[float, str, str]], created_at: float, levels: list[list[str]]
) -> dict[str, float]:
    """Durations (seconds) of the phases of one deployment; empty if the logs lack a step."""

    def first(subject: str, state: str) -> float | None:
        return next((t for t, s, st in events if s == subject and st == state), None)

    scheduled, running = first("df", "scheduled"), first("df", "running")
    if scheduled is None or running is None:
        return {}
    out = {"schedule": scheduled - created_at}
    prev_end = scheduled
    for k, level in enumerate(levels):
        starts = [first(t, "deploying") for t in level]
        ends = [first(t, "running") for t in level]
        if any(x is None for x in starts + ends):
            return {}
        start, end = min(x for x in starts if x is not None), max(x for x in ends if x is not None)
        out[f"handoff{k}"] = start - prev_end
        out[f"level{k}"] = end - start
        prev_end = end
    out["finalize"] = running - prev_end
    out["total"] = running - created_at
    return out


def breakdown(logs: Path, runs: list[dict[str, Any]], levels: list[list[str]]) -> dict[str, Any]:
    """Median of every phase over ``runs`` (each with ``id`` and ``created_at``), in ms."""
    events = read_events(logs)
    per_run = [phases(events.get(r["id"], []), r["created_at"], levels) for r in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return {"runs": 0}
    out: dict[str, Any] = {"runs": len(per_run)}
    for key in per_run[0]:
        out[key] = round(percentile([p[key] * 1000 for p in per_run], 50), 1)
    out["per_run_schedule"] = [round(p["schedule"] * 1000, 1) for p in per_run]
    out["levels"] = {f"level{k}": level for k, level in enumerate(levels)}
    return out
