"""Part 2 of the migration benchmark: failover (see ``migration.py``).

The counting dataflow once more; once ``count`` has taken ``FAILOVER_KILL_AFTER`` records
its agent is killed with -9, and the API is polled until the task runs on another device
and the failover migration has ended; then the sink gap after the kill and the sink's
check.
"""

from __future__ import annotations

import time
from typing import Any

import incidents
from common import BenchApiError, Stack, log
from etl_pipeline import SinkTail
from migration_flow import FINISHED, POLL_S, RATE, check_sink, counting_spec, task_of
from migration_measures import max_gap, per_second, stalls

FAILOVER_KILL_AFTER = 3_000  # records counted before the kill (checkpoints every 1 s)
FAILOVER_TAIL_S = 15.0  # source time left after the expected failover


def failover_run(own: Stack, lost_after: float) -> dict[str, Any]:
    api = own.api
    out = own.workdir / "failover.jsonl"
    total = int(RATE * (FAILOVER_KILL_AFTER / RATE + lost_after + FAILOVER_TAIL_S))
    log(f"failover: source {total} records at {RATE:g}/s, lost_after {lost_after:g}s")
    error: str | None = None
    events: dict[str, float] = {}
    failover: dict[str, Any] | None = None
    new_device: str | None = None
    with SinkTail(out) as tail:
        t0_wall = time.time()
        df_id = api.submit(counting_spec(out, total))
        api.wait_state(df_id, {"running"}, timeout=60)
        deadline = time.monotonic() + 60
        while task_of(api, df_id, "count")["records_in"] < FAILOVER_KILL_AFTER:
            if time.monotonic() > deadline:
                raise BenchApiError(f"count did not take {FAILOVER_KILL_AFTER} records within 60 s")
            time.sleep(POLL_S)
        victim = task_of(api, df_id, "count")["device"]
        t_kill = time.time()
        own.platform.agents[victim].kill()
        log(f"failover: killed agent {victim} (-9)")
        deadline = time.monotonic() + lost_after + 60
        while time.monotonic() < deadline:
            now = time.time()
            t = task_of(api, df_id, "count")
            if "running_elsewhere" not in events and t["device"] != victim and t["state"] == "running":
                events["running_elsewhere"] = now
                new_device = t["device"]
            if "lost" not in events:
                with_status = api.http.get(f"/api/v1/devices/{victim}")
                if with_status.status_code == 200 and with_status.json().get("status") == "lost":
                    events["lost"] = now
            for m in api.http.get("/api/v1/migrations", params={"dataflow": df_id}).json():
                if m.get("origin") == "failover" and m.get("task") == "count":
                    failover = m
                    events.setdefault("failover_migration_seen", now)
                    if m.get("state") in FINISHED:
                        events.setdefault("failover_migration_ended", now)
            if "running_elsewhere" in events and "failover_migration_ended" in events:
                break
            time.sleep(POLL_S)
        else:
            error = f"no failover within {lost_after + 60:g}s of the kill: {events}, {failover}"
        try:
            df = api.wait_state(df_id, {"completed"}, timeout=total / RATE + 90)
        except BenchApiError as e:
            error = (error + "; " if error else "") + str(e)[:600]
            df = api.dataflow(df_id)
            api.delete(df_id)
        else:
            tail.wait(total, 15)
    t_end_wall = time.time()
    times = [t for t, _ in tail.arrivals]
    resumed = events.get("running_elsewhere")
    first_new = next((t for t in times if resumed and t >= resumed), None)
    gap = max_gap(times, t_kill, resumed) if resumed else None
    since = {k: round(v - t_kill, 3) for k, v in events.items()}
    created = failover.get("created_at") if failover else None
    return {
        "dataflow": df_id,
        "dataflow_state": df["state"],
        "error": error,
        "source_records": total,
        "killed": victim,
        "new_device": new_device,
        "failover_s": since.get("running_elsewhere"),
        "seconds_after_kill": since,
        "failover_migration_created_after_kill_s": (
            round(created - t_kill, 3) if isinstance(created, int | float) and created else None
        ),
        "sink_gap_after_kill_ms": None if gap is None else round(gap * 1000.0, 1),
        "first_sink_record_after_failover_s": None if first_new is None else round(first_new - t_kill, 3),
        "sink_stalls_over_1s": stalls(times, t_kill),
        "sink_records_per_s_from_kill": per_second(times, t_kill),
        "failover_migration": failover,
        "sink": check_sink(out, total),
        "incidents": {"logs": incidents.scan(own.platform.logs, t0_wall, t_end_wall)},
    }
