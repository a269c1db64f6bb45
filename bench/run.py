"""ECHO benchmarks (``make bench``): start brokers and the platform in a temp dir, run the
benchmarks, print ONE JSON document on stdout (progress on stderr).

    .venv/bin/python bench/run.py [--quick] [--only NAME]... [--keep]

Benchmarks:

- ``agent_footprint`` (``agent_footprint.py``): every agent's RSS idle, and fog-1's running a
  10-task stream dataflow; targets idle <= 60 MB, <= 100 MB with 10 stream tasks.
- ``deploy_latency`` (``deploy_latency.py``): POST of a 10-task dataflow over 4 agents ->
  every task running; p50/p95/max over 20 runs (5 with ``--quick``); target p50 <= 50 ms.
- ``stream_edge`` (``stream_edge.py``, ``raw_brokers.py``): records/s over one cross-agent
  stream edge with ~256-byte records (over MQTT and over a NATS channel), next to raw paho-mqtt
  QoS 1 and NATS pub -> sub rates for 256-byte messages; targets >= 0.25 x (MQTT) and >= 0.4 x
  (NATS) the raw NATS rate, and >= 0.5 x the raw MQTT rate.
- ``stream_latency`` (``stream_latency.py``): per-record latency over a stream edge between
  two agents at 1,000 records/s, MQTT and NATS channels; target p50 <= 5 ms.
- ``batch_edge`` (``batch_edge.py``): the same cross-agent edge with ``model: stream`` and with
  ``model: batch`` (count 100, seconds 1.0), ~256-byte records; target batch >= 5 x stream.
- ``file_edge`` (``file_edge.py``): one 256 MiB file (32 MiB with ``--quick``) from
  ``io.dir_source`` over a file edge to ``io.dir_sink`` on another agent: MB/s end to end and
  from the first byte, next to a local copy and raw MQTT QoS 1 with 256 KiB messages;
  SHA-256 verified; peak RSS of both agents; target >= 0.5 x the raw MQTT MB/s, intact, streamed.
- ``etl_pipeline`` (``etl_pipeline.py``): the RIoTBench ETL example (examples/etl) end to end:
  records/s through the whole pipeline at rate 0, and per-record latency p50/p99 from a
  fixed-rate run (100 lines/s); targets >= 5,000 input records/s and sink p99 <= 250 ms.
- ``agent_cores`` (``agent_cores.py``): the same example on one agent, its stages in the agent's
  event loop and then in worker processes (``resources.worker``): input records/s of each, the
  agent's CPU with its workers (cores used), exactly once.
- ``placement`` (``placement.py``): the scheduler alone (no brokers): placement time for
  1,000 tasks x 1,000 devices and 10,000 x 10,000 (targets <= 1 s and <= 15 s) and sizes in
  between; ``echoctl plan`` end to end (<= 1 s, <= 5 s); greedy placements/s (>= 5,000); one task
  of 10,000 moved on its neighbourhood (<= 50 ms); quality: greedy's cost vs the HiGHS ILP
  optimum on random small instances (gap).
- ``testbed_etl`` (``testbed_etl.py``): the same example on the emulated testbed (``make testbed``'s
  fleet: edge devices +40 ms / 10 Mbit/s from the brokers, fog +10 ms), placement left to
  ``round-robin`` then ``greedy``: placement chosen and per-record latency p50/p99 at a fixed
  rate; target greedy's sink p50 >= 2 x lower. Needs root (network namespaces), else ``skipped``.
- ``security_cost`` (``security_cost.py``): deploy p50 and one stream edge's records/s on the
  secured stack next to the same stack with plaintext brokers (the same logins and ACLs: no
  stack accepts anonymous clients); target: TLS costs <= 15 %.
- ``metrics_cost`` (``metrics_cost.py``): one stream edge's records/s with the services' /metrics
  scraped by Prometheus every second vs without metrics (target: cost <= 5 %), and the time a
  scrape of the master's and the registry's /metrics takes with 1,000 devices and 5,000 tasks.
- ``migration`` (``migration.py``): io.generate (1,000/s) -> stats.count_by_key -> io.file_sink on a
  platform of its own; 100 migrations (20 with ``--quick``) of the counting task round-robin over
  three agents: downtime at the sink p50/p99 (targets <= 250 ms / <= 1 s) next to raw MQTT QoS 1
  publish -> receive, the saga's drain/resume timings, records lost/duplicated (0/0) and state
  carried; then kill -9 of its agent: failover time (target <= lost_after + 1 s), lost/duplicated.

- ``migration_state`` (``migration_state.py``): migration of a ``stats.count_by_key`` holding 1 MB and
  10 MB of state (100 MB without ``--quick``; ``ECHO_BENCH_STATE_MB=1000`` for 1 GB) while records flow,
  moved 3 times back and forth (once with ``--quick``; ``ECHO_BENCH_MOVES``): downtime p50/p99 over the
  moves, the saga's drain and resume, records lost/duplicated and the counts carried; target downtime
  p50 <= 1 s at 100 MB (issue 11).

- ``console_render`` (``console_render.py``): the web console in Chromium with 1,000 devices and a
  200-task dataflow: time to first render of the dataflow's page (and the devices page); target <= 1 s.

- ``fleet`` (``fleet.py``, emulators in ``fleet_agents.py``): 1,000 enrolled devices (the real agent
  code, 250 per process) with 1 Hz heartbeats, idle and with a 1,000-task dataflow: registry CPU
  (target <= 50 % of a core), heartbeat -> Redis p99 (<= 50 ms), POST -> all running (<= 5 s),
  master RSS (<= 300 MB), bytes per idle device on the wire, extrapolated to 10,000 devices.

- ``fleet_dense`` (``fleet.py``): 1,000 tasks on 100 emulated devices (about ten per device), POST ->
  every task running, p50 and max of three deployments (target <= 3 s, issue 11).
The new ones also report CPU time and peak RSS of the platform's processes (``procs.py``)
and what went wrong meanwhile (``incidents.py``: heartbeat gaps, liveness flaps, commands
not acked, retransmissions); on this shared 2-core machine the per-CPU-second figures
(``records_per_agent_cpu_s`` ...) vary far less with the load than the wall-clock rates.

Figures depend on the machine and on what else runs on it: the JSON carries the CPU
count and load averages before and after. ``--keep`` keeps the temp dir (with the
platform's logs) for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agent_cores
import agent_footprint
import batch_edge
import common
import console_render
import deploy_latency
import etl_pipeline
import file_edge
import fleet
import metrics_cost
import migration
import migration_state
import placement
import security_cost
import spool
import stream_edge
import stream_latency
import testbed_etl
from common import Stack, log, running_stack, scan_logs

BENCHMARKS: dict[str, Callable[[Stack, bool], dict[str, Any]]] = {
    "agent_footprint": agent_footprint.run,  # first: the agents idle, nothing run on them yet
    "deploy_latency": deploy_latency.run,
    "stream_edge": stream_edge.run,
    "stream_latency": stream_latency.run,
    "batch_edge": batch_edge.run,
    "file_edge": file_edge.run,
    "etl_pipeline": etl_pipeline.run,
    "agent_cores": agent_cores.run,
    "placement": placement.run,
    "testbed_etl": testbed_etl.run,
    "migration": migration.run,
    "migration_state": migration_state.run,
}
# benchmarks that start stacks of their own, run after the shared one is gone
STANDALONE: dict[str, Callable[[Stack | None, bool], dict[str, Any]]] = {
    "security_cost": security_cost.run,
    "metrics_cost": metrics_cost.run,
    "console_render": console_render.run,
    "fleet": fleet.run,
    "fleet_dense": fleet.run_dense,
    "spool": spool.run,
}
ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() or None
    return f"{commit}+dirty" if commit and dirty.stdout.strip() else commit


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "git": git_commit(),
    }


def _on_sigterm(*_: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the platform and brokers are always stopped."""
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ECHO benchmarks; one JSON document on stdout")
    p.add_argument(
        "--only",
        choices=sorted([*BENCHMARKS, *STANDALONE]),
        action="append",
        help="run only this benchmark (repeatable)",
    )
    p.add_argument("--quick", action="store_true", help="fewer runs and records")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    names = args.only or [*BENCHMARKS, *STANDALONE]
    common.KEEP = args.keep  # the stacks benchmarks start of their own keep their dirs too
    doc: dict[str, Any] = {"quick": args.quick, "environment": environment(), "benchmarks": {}}
    t0 = time.monotonic()
    rc = 0
    try:
        shared = [n for n in names if n in BENCHMARKS]
        with running_stack(keep=args.keep) if shared else contextlib.nullcontext() as stack:
            if stack is not None:
                doc["platform"] = {
                    "fleet": [{"id": a.device_id, "tier": a.tier} for a in stack.fleet],
                    "settings": "service defaults (no ECHO_* overrides)",
                }
            for name in shared:
                log(f"== {name}")
                try:
                    doc["benchmarks"][name] = BENCHMARKS[name](stack, args.quick)
                except Exception as e:  # a benchmark that breaks is a figure too
                    log(f"{name} failed: {type(e).__name__}: {e}")
                    doc["benchmarks"][name] = {"error": f"{type(e).__name__}: {e}", "met": False}
                    rc = 1
            if stack is not None:
                doc["platform_logs"] = scan_logs(stack.logs)
                if args.keep:
                    doc["workdir"] = str(stack.workdir)
        for name in (n for n in names if n in STANDALONE):
            log(f"== {name}")
            try:
                doc["benchmarks"][name] = STANDALONE[name](None, args.quick)
            except Exception as e:
                log(f"{name} failed: {type(e).__name__}: {e}")
                doc["benchmarks"][name] = {"error": f"{type(e).__name__}: {e}", "met": False}
                rc = 1
    except KeyboardInterrupt:
        log("interrupted")
        doc["interrupted"] = True
        rc = 130
    doc["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["elapsed_s"] = round(time.monotonic() - t0, 1)
    doc["targets_met"] = {n: bool(b.get("met")) for n, b in doc["benchmarks"].items()}
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
