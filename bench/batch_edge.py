"""Micro-batch edge vs stream edge: the same cross-agent edge, once per edge model.

``io.generate`` (rate 0, a padding field so each record's JSON is ~256 bytes) on edge-1 ->
``io.file_sink`` on cloud-1, once with ``model: stream`` (one MQTT message per record) and
once with ``model: batch`` (``batch: {count: 100, seconds: 1.0}``: one MQTT message per
micro-batch of 100 records). Both agents are separate processes on this machine.

``records_per_s`` is measured at the sink exactly as in ``stream_edge``: the sink file is
polled every 5 ms; the rate is the records written between the first poll that sees data
and the poll that sees all N, divided by that time (deployment and end of stream left
out). The file is read back to check every record arrived exactly once. A full run whose
measured span is under 3 s is repeated (at most twice) with enough records for ~6 s at
the rate just measured, so each figure covers at least 3 s (``--quick``: fewer records,
no repeat; the span is then shorter).

Each run also carries ``processes`` (CPU time and peak RSS of both agents and the broker,
``procs.py``) and ``incidents`` (heartbeat gaps, liveness flaps, retransmissions logged
during the run, ``incidents.py``).

Target: batch records/s >= 5 x stream records/s, every record exactly once at the sink.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

import incidents
from common import Stack, log
from procs import ProcSampler, platform_pids
from stream_edge import check_file, expected_bytes, padding, rate_timeline, size_of

TARGET_RATIO = 5.0
BATCH = {"count": 100, "seconds": 1.0}
SOURCE, SINK = "edge-1", "cloud-1"
POLL_S = 0.005
MIN_SPAN_S = 3.0
AIM_SPAN_S = 6.0  # the rate of a short run understates a longer one's: aim well above 3 s
# records per run: (quick, first full attempt, ceiling of the repeat)
COUNTS = {"stream": (5_000, 20_000, 600_000), "batch": (100_000, 200_000, 2_000_000)}
ROUND_TO = 10_000
NO_DATA_S = 60.0  # no record at the sink this long after the POST: the dataflow is stuck


def spec(model: str, count: int, pad: str, path: Path) -> dict[str, Any]:
    edge: dict[str, Any] = {"from": "gen", "to": "sink", "model": model}
    if model == "batch":
        edge["batch"] = dict(BATCH)
    return {
        "name": f"{model}-edge",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": count, "rate": 0, "fields": {"pad": pad}},
                "placement": {"device": SOURCE},
            },
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(path)},
                "placement": {"device": SINK},
            },
        ],
        "edges": [edge],
    }


def one_run(stack: Stack, model: str, count: int, timeout: float = 240.0) -> dict[str, Any]:
    pad = padding(count)
    out = stack.workdir / f"{model}-sink-{count}.jsonl"
    total = expected_bytes(count, pad)
    line_bytes = total / count
    log(f"{model} edge: {count} records of ~{round(line_bytes - 1)} B, {SOURCE} -> {SINK}")
    hb = incidents.HeartbeatWatch(stack)
    with ProcSampler(platform_pids(stack, agents=(SOURCE, SINK)), every=0.1) as procs, hb:
        t0_wall, t0 = time.time(), time.perf_counter()
        df_id = stack.api.submit(spec(model, count, pad, out))
        first: tuple[float, int] | None = None
        last: tuple[float, int] = (t0, 0)
        samples: list[tuple[float, int]] = []
        while True:
            now, size = time.perf_counter(), size_of(out)
            if size and first is None:
                first = (now, size)
            if size != last[1]:
                samples.append((now - t0, size))
            last = (now, size)
            if size >= total or now - t0 > timeout:
                break
            if first is None and now - t0 > NO_DATA_S:
                df = stack.api.dataflow(df_id)
                stack.api.delete(df_id)
                tasks = {t["id"]: (t["device"], t["state"], t["reason"]) for t in df["tasks"]}
                raise RuntimeError(
                    f"{model}: no record at the sink {NO_DATA_S:g} s after POST; dataflow "
                    f"{df_id} {df['state']} ({df.get('reason')!r}), tasks {tasks}"
                )
            time.sleep(POLL_S)
        try:
            left = timeout - (time.perf_counter() - t0)
            df = stack.api.wait_state(df_id, {"completed"}, timeout=max(15.0, left))
        except Exception:
            stack.api.delete(df_id)
            raise
        t_done = time.perf_counter() - t0
    if first is None or last[1] < total:
        stack.api.delete(df_id)
        raise RuntimeError(f"{model}: sink file has {last[1]} of {total} bytes after {timeout}s")
    span = last[0] - first[0]
    records = (last[1] - first[1]) / line_bytes
    rate = records / span if span > 0 else float("nan")
    check = check_file(out, count)
    out.unlink()
    keys = ("device", "state", "records_in", "records_out")
    edge = df["edges"][0]
    result = {
        "model": model,
        "records": count,
        "record_json_bytes_max": len(orjson.dumps({"seq": count - 1, "pad": pad})),
        "records_per_s": round(rate, 1),
        "mb_per_s": round(rate * (line_bytes - 1) / 1e6, 2),
        "measured_span_s": round(span, 3),
        "first_data_after_post_s": round(first[0] - t0, 3),
        "post_to_completed_s": round(t_done, 3),
        "records_per_s_by_0_5s": rate_timeline(samples, line_bytes),
        "edge": {k: edge.get(k) for k in ("model", "transport", "topic")},
        "tasks": {t["id"]: {k: t[k] for k in keys} for t in df["tasks"]},
        "sink_file_check": check,
        "dataflow_state": df["state"],
        "processes": procs.figures(),
        "incidents": {
            "heartbeats": {k: v for k, v in hb.figures().items() if k in (SOURCE, SINK)},
            "logs": incidents.scan(stack.logs, t0_wall, time.time()),
        },
    }
    agent_cpu = sum(v["cpu_s"] for k, v in result["processes"].items() if k.startswith("agent-"))
    # load-independent: records per CPU second the two agents spent (the machine is shared)
    result["records_per_agent_cpu_s"] = round(count / agent_cpu, 1) if agent_cpu > 0 else None
    if model == "batch":
        result["batch"] = dict(BATCH)
        result["approx_mqtt_msgs_per_s"] = round(rate / BATCH["count"], 1)
    else:
        result["approx_mqtt_msgs_per_s"] = round(rate, 1)
    log(
        f"{model} edge: {result['records_per_s']:.0f} records/s over {result['measured_span_s']} s "
        f"(POST -> completed {result['post_to_completed_s']} s); file check {check}"
    )
    return result


def measured(stack: Stack, model: str, quick: bool) -> dict[str, Any]:
    """One run; in a full run, repeated (at most twice) with more records until it spans 3 s."""
    quick_n, full_n, ceiling = COUNTS[model]
    res = one_run(stack, model, quick_n if quick else full_n)
    attempts: list[dict[str, Any]] = []

    def short(r: dict[str, Any]) -> bool:
        return r["measured_span_s"] < MIN_SPAN_S and r["records"] < ceiling

    while not quick and short(res) and len(attempts) < 2:
        bigger = int(res["records_per_s"] * AIM_SPAN_S)
        bigger = min(ceiling, max(res["records"] * 2, -(-bigger // ROUND_TO) * ROUND_TO))
        log(f"{model} edge: {res['measured_span_s']} s is under {MIN_SPAN_S} s; again with {bigger} records")
        attempts.append({k: res[k] for k in ("records", "records_per_s", "measured_span_s")})
        res = one_run(stack, model, bigger)
    return res | {"earlier_attempts": attempts} if attempts else res


def run(stack: Stack, quick: bool) -> dict[str, Any]:
    stream = measured(stack, "stream", quick)
    batch = measured(stack, "batch", quick)
    ratio = batch["records_per_s"] / stream["records_per_s"] if stream["records_per_s"] else float("nan")
    clean = all(
        r["sink_file_check"]["duplicates"] == 0
        and r["sink_file_check"]["missing"] == 0
        and r["sink_file_check"]["out_of_range"] == 0
        for r in (stream, batch)
    )
    spans_ok = all(r["measured_span_s"] >= MIN_SPAN_S for r in (stream, batch))
    log(f"batch vs stream: {batch['records_per_s']:.0f} / {stream['records_per_s']:.0f} = {ratio:.2f}x")
    return {
        "stream_records_per_s": stream["records_per_s"],
        "batch_records_per_s": batch["records_per_s"],
        "ratio_batch_vs_stream": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "records_per_agent_cpu_s": {
            "stream": stream["records_per_agent_cpu_s"],
            "batch": batch["records_per_agent_cpu_s"],
        },
        "ratio_by_agent_cpu": (
            round(batch["records_per_agent_cpu_s"] / stream["records_per_agent_cpu_s"], 2)
            if batch["records_per_agent_cpu_s"] and stream["records_per_agent_cpu_s"]
            else None
        ),
        "met": bool(ratio >= TARGET_RATIO) and clean,
        "exactly_once_at_sink": clean,
        "measured_spans_at_least_3s": spans_ok,
        "method": (
            "the same spec twice, only the edge's model differs: io.generate (count N, rate 0, ~256-byte "
            f"records) on {SOURCE} -> io.file_sink on {SINK}; records/s at the sink from the first poll "
            "that sees data to the poll that sees all N (sink file size polled every 5 ms; every line has "
            "a known size), so deployment and end of stream are left out; the sink file is then read back "
            "(each seq once). met requires ratio >= target and exactly-once at the sink. The machine is "
            "shared, so wall-clock rates follow the load; records_per_agent_cpu_s (records / CPU seconds "
            "both agents spent, psutil) and ratio_by_agent_cpu do not."
        ),
        "stream": stream,
        "batch": batch,
    }
