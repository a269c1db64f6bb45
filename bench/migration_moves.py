"""Part 1 of the migration benchmark: migration downtime (see ``migration.py``).

``MIGRATIONS`` migrations of ``count``, one at a time, round-robin over the fog devices,
each started from a settled flow and followed to its end; then the downtime (sink gap)
and added latency of each, the saga's step timings and the sink's check.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import incidents
from common import Api, BenchApiError, Stack, log, percentile
from etl_pipeline import SinkTail
from migration_flow import FINISHED, FOGS, POLL_S, RATE, check_sink, counting_spec, task_of
from migration_measures import max_gap, per_second, stalls, stats_ms
from procs import ProcSampler, platform_pids

LEAD_S = 5.0  # source time before the first migration (warm-up, baseline)
BUDGET_S = 3.0  # source time per migration: the source must outlast the migrations
MIGRATION_TIMEOUT_S = 60.0
SETTLE_LAG_S = 0.5  # the sink this close to the source's schedule before the next migration
SETTLE_TIMEOUT_S = 30.0
WARM_RECORDS = 1_500


def wait_migration(api: Api, mid: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Poll until the migration ends; (its JSON, wall time it was seen ended)."""
    deadline = time.monotonic() + timeout
    m: dict[str, Any] = {}
    while time.monotonic() < deadline:
        m = api.http.get(f"/api/v1/migrations/{mid}").json()
        if m.get("state") in FINISHED:
            return m, time.time()
        time.sleep(POLL_S)
    return m, time.time()


def source_start(arrivals: list[tuple[float, int]]) -> float:
    """When the source's schedule began: ``io.generate`` emits seq i at start + i/R, so the
    earliest (arrival - seq/R) over the sink's records (latencies count from the fastest)."""
    return min((t - s / RATE for t, s in arrivals), default=time.time())


def settle(tail: SinkTail, t_start: float) -> tuple[float, bool]:
    """Wait (polling, deadline) until the sink is within ``SETTLE_LAG_S`` of the source's
    schedule, so that each migration starts from a steady flow; (seconds waited, settled)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < SETTLE_TIMEOUT_S:
        if tail.arrivals:
            _, seq = tail.arrivals[-1]
            if time.time() - t_start - (seq + 1) / RATE <= SETTLE_LAG_S:
                return time.monotonic() - t0, True
        time.sleep(POLL_S)
    return time.monotonic() - t0, False


def step_ms(m: dict[str, Any], name: str) -> float | None:
    s = next((s for s in m.get("steps", []) if s.get("name") == name), None)
    return None if s is None or s.get("ms") is None else float(s["ms"])


def migrations_run(own: Stack, n: int) -> dict[str, Any]:
    api = own.api
    work = own.workdir
    out = work / "counts.jsonl"
    total = int(RATE * (LEAD_S + n * BUDGET_S))
    log(f"migration: {n} migrations, source {total} records at {RATE:g}/s")
    hb = incidents.HeartbeatWatch(own)
    sampler = ProcSampler(platform_pids(own, services=("master", "migrator")), every=0.1)
    moves: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    error: str | None = None
    stopped_early: str | None = None
    with hb, sampler, SinkTail(out) as tail:
        t0_wall = time.time()
        df_id = api.submit(counting_spec(out, total))
        df = api.wait_state(df_id, {"running"}, timeout=60)
        edges = {f"{e['from']}->{e['to']}": e.get("transport") for e in df["edges"]}
        tail.wait(WARM_RECORDS, 60)
        baseline_end = time.time()
        t_start = source_start(list(tail.arrivals))
        targets = itertools.cycle(FOGS)
        while len(moves) + len(failures) < n:
            settle_s, settled = settle(tail, t_start)
            count = task_of(api, df_id, "count")
            gen = task_of(api, df_id, "gen")
            if gen["state"] != "running" or count["state"] != "running":
                stopped_early = f"gen {gen['state']}, count {count['state']} before all migrations"
                break
            target = next(targets)
            if target == count["device"]:
                target = next(targets)
            t_post = time.time()
            r = api.http.post(f"/api/v1/dataflows/{df_id}/tasks/count/migrate", json={"device": target})
            if r.status_code != 202:
                failures.append({"post": r.status_code, "body": r.text[:500], "target": target})
                log(f"migration: POST -> {r.status_code}: {r.text[:300]}")
                if len(failures) >= 5:
                    break
                continue
            mid = r.json()["migration"]
            m, t_seen = wait_migration(api, mid, MIGRATION_TIMEOUT_S)
            rec = {
                "id": mid,
                "target": target,
                "t_post": t_post,
                "t_seen": t_seen,
                "m": m,
                "settle_s": round(settle_s, 3),
                "settled": settled,
            }
            if m.get("state") != "completed":
                failures.append(rec)
                log(f"migration {mid}: {m.get('state')}: {m}")
                if m.get("state") not in FINISHED:
                    error = f"migration {mid} not ended after {MIGRATION_TIMEOUT_S:g}s"
                    break
                continue
            moves.append(rec)
            if len(moves) % 10 == 0:
                log(f"migration: {len(moves)} done")
        t_migrations_done = time.time()
        remaining = max(0.0, total / RATE - (t_migrations_done - t0_wall))
        try:
            df = api.wait_state(df_id, {"completed"}, timeout=remaining + 90)
        except BenchApiError as e:
            error = (error + "; " if error else "") + str(e)[:600]
            df = api.dataflow(df_id)
            api.delete(df_id)
        else:
            tail.wait(total, 15)
    t_end_wall = time.time()
    times = [t for t, _ in tail.arrivals]
    t_start = source_start(tail.arrivals)
    lat = {s: t - t_start - s / RATE for t, s in tail.arrivals}  # behind the source's schedule
    base_lat = [lat[s] for t, s in tail.arrivals if baseline_end - 1.0 <= t <= baseline_end]
    lat0 = percentile(base_lat, 50) if base_lat else 0.0
    downtime, added = [], []
    for rec in moves:
        g = max_gap(times, rec["t_post"], rec["t_seen"])
        rec["downtime_ms"] = None if g is None else round(g * 1000.0, 1)
        if g is not None:
            downtime.append(g * 1000.0)
        lo, hi = int((rec["t_post"] - t_start) * RATE), int((rec["t_seen"] - t_start) * RATE) + 1
        peak = max((lat[s] for s in range(max(0, lo), hi) if s in lat), default=None)
        rec["added_latency_ms"] = None if peak is None else round((peak - lat0) * 1000.0, 1)
        if peak is not None:
            added.append((peak - lat0) * 1000.0)
    base = [t for t in times if baseline_end - 1.0 <= t <= baseline_end]
    base_gap = max((b - a for a, b in itertools.pairwise(base)), default=None)
    sink = check_sink(out, total)
    ms = [m["m"] for m in moves]
    listed = api.http.get("/api/v1/migrations", params={"dataflow": df_id}).json()
    others = [x for x in listed if x["id"] not in {r["id"] for r in moves + failures if "id" in r}]
    worst = sorted(moves, key=lambda r: -(r["downtime_ms"] or 0))[:3]
    t_first_post = moves[0]["t_post"] if moves else baseline_end
    return {
        "dataflow": df_id,
        "dataflow_state": df["state"],
        "error": error,
        "stopped_early": stopped_early,
        "source_records": total,
        "edges_transport": edges,
        "migrations_requested": n,
        "migrations_completed": len(moves),
        "migrations_not_completed": [
            {k: v for k, v in f.items() if k not in ("t_post", "t_seen")} for f in failures
        ],
        "other_migrations_of_the_dataflow": others,
        "downtime_ms": stats_ms(downtime),
        "baseline_gap_ms": None if base_gap is None else round(base_gap * 1000.0, 1),
        "added_latency_ms": stats_ms(added),
        "baseline_latency_ms": round(lat0 * 1000.0, 1),
        "settle_before_migration_s": stats_ms([r["settle_s"] * 1000.0 for r in moves])
        | {"not_settled": sum(1 for r in moves if not r["settled"])},
        "post_to_completed_ms": stats_ms([(r["t_seen"] - r["t_post"]) * 1000.0 for r in moves]),
        "saga_steps_ms": {
            name: stats_ms([v for m in ms if (v := step_ms(m, name)) is not None])
            for name in ("place", "drain", "resume")
        },
        "saga_drain_plus_resume_ms": stats_ms(
            [(step_ms(m, "drain") or 0.0) + (step_ms(m, "resume") or 0.0) for m in ms]
        ),
        "final_generation": task_of(api, df_id, "count").get("generation"),
        "sink": sink,
        "worst_migrations": [{"downtime_ms": r["downtime_ms"], "migration": r["m"]} for r in worst],
        "per_migration": [
            {
                "id": r["id"],
                "move": f"{r['m'].get('source')} -> {r['m'].get('target')}",
                "generation": r["m"].get("generation_to"),
                "t_post_s": round(r["t_post"] - t_first_post, 3),
                "post_to_completed_ms": round((r["t_seen"] - r["t_post"]) * 1000.0, 1),
                "drain_ms": step_ms(r["m"], "drain"),
                "resume_ms": step_ms(r["m"], "resume"),
                "downtime_ms": r["downtime_ms"],
                "added_latency_ms": r["added_latency_ms"],
                "settle_s": r["settle_s"],
            }
            for r in moves
        ],
        "sink_stalls_over_1s": stalls(times, t_first_post),
        "sink_records_per_s_from_first_migration": per_second(times, t_first_post),
        "processes": sampler.figures(),
        "incidents": {
            "max_heartbeat_gap_s": {d: h.get("max_gap_s") for d, h in hb.figures().items()},
            "logs": incidents.scan(own.platform.logs, t0_wall, t_end_wall),
        },
    }
