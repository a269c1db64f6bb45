"""Placement benchmark: how long the scheduler takes, and how good greedy is.

- time: ``placing.place`` (validation included) with the ``greedy`` strategy for
  1,000 tasks x 1,000 devices and 10,000 x 10,000 (targets <= 1 s and <= 15 s), and a few
  sizes in between to show how it grows (``--quick``: up to 2,000 x 2,000, no 10k target).
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
import sys
import time
from typing import Any

from echo_scheduler.placing import place
from echo_shared.models import DataflowSpec, DeviceRecord, PlacementStrategy

TIERS = ("edge", "fog", "cloud")
TIME_TARGETS = {(1000, 1000): 1.0, (10_000, 10_000): 15.0}


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
    q = quality(10 if quick else 30)
    log(f"greedy gap vs ILP: {q['greedy_gap_pct']}")
    timed = [r for r in rows if "met" in r]
    return {
        "time": rows,
        "quality": q,
        "met": all(r["met"] for r in timed),
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
