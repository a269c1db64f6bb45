"""Placement benchmark: how long the scheduler takes, and how good greedy is.

- time: ``placing.place`` (validation included) with the ``greedy`` strategy for
  1,000 tasks x 1,000 devices and 10,000 x 10,000 (targets <= 1 s and <= 15 s), and a few
  sizes in between to show how it grows (``--quick``: up to 2,000 x 2,000, no 10k target).
- end to end: ``echoctl plan`` over JSON files (reading, validating, placing, printing) for
  1,000 x 1,000 and 10,000 x 10,000 (targets <= 1 s and <= 5 s); the greedy pass alone in
  placements/s (target >= 5,000/s at 10,000 x 10,000); re-placing one task of a 10,000-task
  dataflow with the others pinned, as a migration asks (target <= 50 ms): on its
  neighbourhood (``placing.place_moving``, what the migrator asks), p50 and max over
  ``MOVES`` tasks, and the whole dataflow placed again with pins for comparison; how good
  the neighbourhood's choice is: the whole dataflow's objective after the move, with the
  device it picked against the one the whole placement picked (gap in %, <= 0 is no worse),
  on a 2,000-task instance.
- quality: on random small instances (8-15 tasks x 6-10 devices whose uplinks and links
  have varied latency and bandwidth, some reaching only MQTT or only NATS), the objective
  of ``greedy`` and ``round-robin`` against the ILP (``optimal``): mean and max gap in %.
  Only instances the ILP solved to optimality count for the gap; the others are listed.

Pure computation: no brokers, no platform. Runs inside ``bench/run.py`` (``--only
placement``) or alone: ``.venv/bin/python bench/placement.py [--quick]`` prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from echo_scheduler import greedy
from echo_scheduler.placing import place, place_moving
from echo_scheduler.problem import build
from echo_shared.models import DataflowSpec, DeviceInfo, DeviceRecord, PlacementStrategy

TIERS = ("edge", "fog", "cloud")
TIME_TARGETS = {(1000, 1000): 1.0, (10_000, 10_000): 15.0}
PLAN_TARGETS = {(1000, 1000): 1.0, (10_000, 10_000): 5.0}  # echoctl plan, end to end
GREEDY_TARGET = 5000.0  # placements/s of the greedy pass, 10,000 x 10,000
REPLACE_TARGET_S = 0.05  # one task of a 10,000-task dataflow placed again
MOVES = 20  # tasks moved, one at a time, for the re-placement figures


def log(msg: str) -> None:
    print(f"[bench placement] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- instances


def fleet(n: int, rng: random.Random) -> list[DeviceRecord]:
    """60 % edge devices (slow uplinks, a camera each, most reach only MQTT), 30 % fog, 10 %
    cloud; sites of about ten devices; zone labels; a few GPUs in the fog."""
    out: list[DeviceRecord] = []
    for i in range(n):
        r = rng.random()
        tier = "edge" if r < 0.6 else "fog" if r < 0.9 else "cloud"
        rec: dict[str, Any] = {
            "id": f"{tier}-{i:05d}",
            "tier": tier,
            "site": f"site-{i // 10}" if tier != "cloud" else "dc",
            "labels": {"zone": "abcd"[i % 4]},
            "runtimes": ["python", "process"],
        }
        if tier == "edge":
            rec["capacity"] = {"cpu": rng.choice([1, 2]), "memory_mb": rng.choice([512, 1024])}
            rec["input_streams"] = [f"cam-{i}"]
            rec["uplink"] = {"latency_ms": rng.uniform(10, 80), "bandwidth_mbps": rng.choice([2, 5, 10, 50])}
            rec["connectivity"] = {"brokers": ["mqtt"] if rng.random() < 0.7 else ["mqtt", "nats"]}
        elif tier == "fog":
            rec["capacity"] = {"cpu": rng.choice([4, 8]), "memory_mb": 8192}
            rec["uplink"] = {"latency_ms": rng.uniform(2, 10), "bandwidth_mbps": rng.choice([100, 1000])}
            rec["connectivity"] = {"brokers": ["mqtt", "nats"]}
            if rng.random() < 0.1:
                rec["accelerators"] = {"gpu": 1}
        else:
            rec["capacity"] = {"cpu": 32, "memory_mb": 65536}
            rec["rtt_ms"] = {"mqtt": rng.uniform(0.5, 2), "nats": rng.uniform(0.5, 2)}
            rec["connectivity"] = {"brokers": ["nats"] if rng.random() < 0.5 else ["mqtt", "nats"]}
        out.append(DeviceRecord.model_validate(rec))
    return out


def dataflow(n_tasks: int, devices: list[DeviceRecord], rng: random.Random) -> DataflowSpec:
    """Pipelines of 4-10 tasks, each from a camera on an edge device: parse on the edge or
    anywhere, filter (selectivity 0.2), some on fog with a GPU, aggregates in the cloud."""
    cams = [s for d in devices for s in d.input_streams]
    tasks: list[dict[str, Any]] = []
    edges: list[dict[str, str]] = []
    i = 0
    while i < n_tasks:
        length = min(rng.randint(4, 10), n_tasks - i)
        prev = None
        for j in range(length):
            tid = f"t{i}"
            if j == 0:
                placement: dict[str, Any] = {"input_stream": rng.choice(cams)} if cams else {}
                task = {
                    "id": tid,
                    "operator": "io.generate",
                    "config": {"count": 1},
                    "placement": placement,
                    "hints": {"rate": rng.choice([10, 50, 200]), "record_bytes": rng.choice([200, 2000])},
                }
            else:
                task = {"id": tid, "operator": "core.passthrough"}
                roll = rng.random()
                if roll < 0.1:
                    task["placement"] = {"tier": "cloud"}
                elif roll < 0.2:
                    task["placement"] = {"tier": ["fog", "cloud"], "labels": {"zone": rng.choice("abcd")}}
                elif roll < 0.25:
                    task["hints"] = {"selectivity": 0.2}
                task["resources"] = {"cpu": rng.choice([0.05, 0.1, 0.25]), "memory_mb": 32}
                edges.append({"from": prev or tid, "to": tid})
            tasks.append(task)
            prev = tid
            i += 1
    return DataflowSpec.model_validate({"name": "bench", "tasks": tasks, "edges": edges})


def small_instance(rng: random.Random) -> tuple[DataflowSpec, list[DeviceRecord]]:
    """8-15 tasks x 6-10 devices with links and uplinks of varied latency and bandwidth."""
    n_dev = rng.randint(6, 10)
    devices: list[DeviceRecord] = []
    for i in range(n_dev):
        tier = TIERS[min(2, i * 3 // n_dev)]
        rec: dict[str, Any] = {
            "id": f"d{i}",
            "tier": tier,
            "site": f"s{i % 3}" if tier != "cloud" else "dc",
            "capacity": {"cpu": rng.choice([1, 2, 4]), "memory_mb": 4096},
            "connectivity": {"brokers": rng.choice([["mqtt"], ["mqtt", "nats"], ["mqtt", "nats"], ["nats"]])},
        }
        roll = rng.random()
        if roll < 0.5:
            rec["uplink"] = {"latency_ms": rng.uniform(1, 60), "bandwidth_mbps": rng.choice([1, 5, 20, 100])}
        elif roll < 0.8:
            rec["links"] = {
                "dc": {"latency_ms": rng.uniform(1, 40), "bandwidth_mbps": rng.choice([2, 10, 50])}
            }
        if i == 0:
            rec["input_streams"] = ["feed"]
        devices.append(DeviceRecord.model_validate({"runtimes": ["python"], **rec}))
    n = rng.randint(8, 15)
    tasks: list[dict[str, Any]] = [
        {
            "id": "t0",
            "operator": "io.generate",
            "config": {"count": 1},
            "placement": {"input_stream": "feed"},
            "hints": {"rate": rng.choice([10, 100, 500]), "record_bytes": rng.choice([100, 1000, 4000])},
        }
    ]
    edges = []
    for k in range(1, n):
        task: dict[str, Any] = {
            "id": f"t{k}",
            "operator": "core.passthrough",
            "resources": {"cpu": rng.choice([0.1, 0.3, 0.5])},
        }
        if rng.random() < 0.2:
            task["hints"] = {"selectivity": rng.choice([0.1, 0.5, 2.0])}
        tasks.append(task)
        edges.append({"from": f"t{rng.randrange(max(0, k - 3), k)}", "to": f"t{k}"})
    spec = DataflowSpec.model_validate({"name": "small", "tasks": tasks, "edges": edges})
    return spec, devices


# ------------------------------------------------------------------------- measures


def timing(sizes: list[tuple[int, int]], seed: int = 1) -> list[dict[str, Any]]:
    rows = []
    for n_tasks, n_dev in sizes:
        rng = random.Random(seed)
        devices = fleet(n_dev, rng)
        spec = dataflow(n_tasks, devices, rng)
        t0 = time.perf_counter()
        p = place("df-bench", spec, devices, strategy=PlacementStrategy.greedy)
        took = time.perf_counter() - t0
        row: dict[str, Any] = {
            "tasks": n_tasks,
            "devices": n_dev,
            "seconds": round(took, 3),
            "relays": len(p.relays),
            "nats_channels": sum(1 for c in p.channels if c.transport == "nats"),
            "cost": p.cost,
        }
        target = TIME_TARGETS.get((n_tasks, n_dev))
        if target is not None:
            row["target_s"] = target
            row["met"] = took <= target
        log(f"{n_tasks} tasks x {n_dev} devices: {took:.3f} s")
        rows.append(row)
    return rows


def instance(n: int, seed: int = 1) -> tuple[DataflowSpec, list[DeviceRecord]]:
    rng = random.Random(seed)
    devices = fleet(n, rng)
    return dataflow(n, devices, rng), devices


def plan_cli(n: int) -> dict[str, Any]:
    """``echoctl plan SPEC.json -d DEVICES.json -o json``, timed from the shell's view."""
    spec, devices = instance(n)
    with tempfile.TemporaryDirectory(prefix="echo-plan-") as tmp:
        spec_file, dev_file = Path(tmp) / "spec.json", Path(tmp) / "devices.json"
        spec_file.write_text(spec.model_dump_json(by_alias=True, exclude_none=True))
        fields = DeviceInfo.model_fields
        infos = [{k: v for k, v in d.model_dump(mode="json").items() if k in fields} for d in devices]
        dev_file.write_text(json.dumps(infos))
        cmd = [
            sys.executable,
            "-m",
            "echo_cli.main",
            "plan",
            str(spec_file),
            "-d",
            str(dev_file),
            "-o",
            "json",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"echoctl plan failed: {proc.stderr.strip()[-500:]}")
    placed = len(json.loads(proc.stdout)["tasks"])
    target = PLAN_TARGETS[(n, n)]
    log(f"echoctl plan {n} x {n}: {took:.2f} s")
    return {
        "tasks": n,
        "devices": n,
        "placed": placed,
        "seconds": round(took, 2),
        "target_s": target,
        "met": took <= target,
    }


def greedy_rate(n: int) -> dict[str, Any]:
    """The greedy pass alone (the problem built beforehand), in placements per second."""
    spec, devices = instance(n)
    problem = build("df-bench", spec, devices)
    t0 = time.perf_counter()
    greedy.solve(problem)
    rate = n / (time.perf_counter() - t0)
    log(f"greedy pass, {n} x {n}: {rate:.0f} placements/s")
    return {
        "tasks": n,
        "devices": n,
        "placements_per_s": round(rate),
        "target": GREEDY_TARGET,
        "met": rate >= GREEDY_TARGET,
    }


def movable(spec: DataflowSpec, count: int) -> list[str]:
    """``count`` tasks spread over the spec that a migration may move (not pinned)."""
    free = [t.id for t in spec.tasks if not t.placement.device and not t.placement.input_stream]
    step = max(1, len(free) // count)
    return free[::step][:count]


def replace_one(n: int, quality_n: int) -> dict[str, Any]:
    """One task placed again off its device, the others pinned where they are (what a
    migration asks the scheduler): on its neighbourhood, and the whole dataflow again."""
    spec, devices = instance(n)
    first = place("df-bench", spec, devices, strategy=PlacementStrategy.greedy)
    where = {t.task: t.device for t in first.tasks}
    took: list[float] = []
    for task in movable(spec, MOVES):
        pinned = {k: v for k, v in where.items() if k != task}
        t0 = time.perf_counter()
        place_moving(
            "df-bench", spec, devices, pinned, strategy=PlacementStrategy.greedy, avoid={task: [where[task]]}
        )
        took.append(time.perf_counter() - t0)
    task = movable(spec, 1)[0]
    pinned = {k: v for k, v in where.items() if k != task}
    t0 = time.perf_counter()
    place(
        "df-bench",
        spec,
        devices,
        strategy=PlacementStrategy.greedy,
        pinned=pinned,
        avoid={task: [where[task]]},
    )
    whole = time.perf_counter() - t0
    p50 = statistics.median(took)
    log(f"one task of {n} placed again: {1e3 * p50:.1f} ms p50 on its neighbourhood, {whole:.2f} s whole")
    return {
        "tasks": n,
        "moves": len(took),
        "seconds_p50": round(p50, 4),
        "seconds_max": round(max(took), 4),
        "whole_dataflow_s": round(whole, 3),
        "objective_gap_pct": move_quality(quality_n),
        "target_s": REPLACE_TARGET_S,
        "met": p50 <= REPLACE_TARGET_S,
    }


def move_quality(n: int, moves: int = 8) -> dict[str, Any]:
    """The whole dataflow's objective after a move to the neighbourhood's device against after
    a move to the whole placement's device, in % (negative: the neighbourhood's is better)."""
    spec, devices = instance(n, seed=2)
    g = PlacementStrategy.greedy
    where = {t.task: t.device for t in place("df-q", spec, devices, strategy=g).tasks}
    gaps: list[float] = []
    for task in movable(spec, moves):
        pinned = {k: v for k, v in where.items() if k != task}
        avoid = {task: [where[task]]}
        mine = place_moving("df-q", spec, devices, pinned, strategy=g, avoid=avoid).device_of(task)
        theirs = place("df-q", spec, devices, strategy=g, pinned=pinned, avoid=avoid).device_of(task)
        costs = [
            place("df-q", spec, devices, strategy=g, pinned={**pinned, task: d}).cost["total"]
            for d in (mine, theirs)
        ]
        gaps.append(100.0 * (costs[0] - costs[1]) / costs[1])
    return {
        "tasks": n,
        "moves": len(gaps),
        "mean": round(statistics.fmean(gaps), 4),
        "max": round(max(gaps), 4),
        "min": round(min(gaps), 4),
    }


def quality(instances: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    gaps: list[float] = []
    rr_gaps: list[float] = []
    not_proven: list[str] = []
    ilp_s: list[float] = []
    for k in range(instances):
        spec, devices = small_instance(rng)
        g = place("df-q", spec, devices, strategy=PlacementStrategy.greedy)
        rr = place("df-q", spec, devices, strategy=PlacementStrategy.round_robin)
        t0 = time.perf_counter()
        o = place("df-q", spec, devices, strategy=PlacementStrategy.optimal)
        ilp_s.append(time.perf_counter() - t0)
        best = o.cost["total"]
        if not o.strategy.startswith("optimal") or o.strategy != "optimal":
            not_proven.append(f"#{k}: {o.strategy}")
            continue
        gaps.append(100.0 * (g.cost["total"] - best) / best)
        rr_gaps.append(100.0 * (rr.cost["total"] - best) / best)
    return {
        "instances": instances,
        "proven_optimal": len(gaps),
        "greedy_gap_pct": _stats(gaps),
        "round_robin_gap_pct": _stats(rr_gaps),
        "ilp_seconds": {"mean": round(statistics.fmean(ilp_s), 3), "max": round(max(ilp_s), 3)},
        "not_proven": not_proven,
    }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "mean": round(statistics.fmean(values), 2),
        "max": round(max(values), 2),
        "median": round(statistics.median(values), 2),
    }


def run(_stack: object = None, quick: bool = False) -> dict[str, Any]:
    """The benchmark (``bench/run.py`` passes its stack, unused: placement is pure)."""
    if quick:
        sizes = [(100, 100), (500, 500), (1000, 1000), (2000, 2000)]
    else:
        sizes = [(100, 100), (1000, 1000), (2000, 2000), (5000, 5000), (10_000, 10_000)]
    rows = timing(sizes)
    big = 2000 if quick else 10_000
    plans = [plan_cli(1000)] + ([] if quick else [plan_cli(10_000)])
    rate = greedy_rate(big)
    again = replace_one(big, 1000 if quick else 2000)
    q = quality(10 if quick else 30)
    log(f"greedy gap vs ILP: {q['greedy_gap_pct']}")
    timed = [r for r in rows if "met" in r]
    return {
        "time": rows,
        "plan_cli": plans,
        "greedy": rate,
        "replace_one": again,
        "quality": q,
        "met": all(r["met"] for r in [*timed, *plans]) and (quick or rate["met"]) and (quick or again["met"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer instances")
    args = ap.parse_args(argv)
    json.dump(run(None, args.quick), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
