"""Stream-edge throughput: one cross-agent stream edge carrying ~256-byte records.

``io.generate`` (count N, rate 0, a padding field so each record's JSON is ~256 bytes) on
edge-1 -> ``io.file_sink`` on cloud-1, writing to a temp file. One channel, one MQTT
topic, QoS 1, both agents separate processes on this machine.

``records_per_s`` is measured at the sink: the file is polled every 5 ms; the rate is the
records written between the first poll that sees data and the poll that sees all N,
divided by that time, so deployment and end-of-stream handling are left out. The file is
then read back to check that every record arrived exactly once. A full run whose measured
span is under 3 s is repeated with enough records for ~4.5 s (at most 2M).

Next to it (``raw_brokers``): plain paho-mqtt QoS 1 pub -> sub with 256-byte payloads, and
plain NATS core pub -> sub, as the per-message ceiling of the same broker on this machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

import raw_brokers
import timeline
from common import Stack, log

RECORD_BYTES = 256
TARGET_RATIO = 0.5  # records/s over MQTT vs raw paho QoS 1 msgs/s (the first target)
# issue 11: records/s vs raw nats-py pub -> sub msgs/s of the same run, per channel transport
TARGET_VS_RAW_NATS = {"nats": 0.4, "mqtt": 0.25}
POLL_S = 0.005
SOURCE, SINK = "edge-1", "cloud-1"  # edge-1 reaches only MQTT: an MQTT channel
NATS_SOURCE = "fog-1"  # fog-1 and cloud-1 both reach NATS: a NATS channel
SWEEP_INFLIGHT = (20, 100)
MIN_SPAN_S = 3.0
MAX_RECORDS = 2_000_000


def padding(count: int, size: int = RECORD_BYTES) -> str:
    """A padding string such that ``{"seq": count-1, "pad": ...}`` is exactly ``size`` bytes."""
    overhead = len(orjson.dumps({"seq": max(count - 1, 0), "pad": ""}))
    return "x" * (size - overhead)


def expected_bytes(count: int, pad: str) -> int:
    """Size of the sink file after ``count`` records (one JSON line each)."""
    base = len(orjson.dumps({"seq": 0, "pad": pad})) - 1  # without the digit
    total, lo, digits = 0, 0, 1
    while lo < count:
        hi = min(count, 10**digits)
        total += (hi - lo) * (base + digits + 1)
        lo, digits = hi, digits + 1
    return total


def spec(count: int, pad: str, path: Path, source: str = SOURCE) -> dict[str, Any]:
    return {
        "name": "stream-edge",
        "tasks": [
            {
                "id": "gen",
                "operator": "io.generate",
                "config": {"count": count, "rate": 0, "fields": {"pad": pad}},
                "placement": {"device": source},
            },
            {
                "id": "sink",
                "operator": "io.file_sink",
                "config": {"path": str(path)},
                "placement": {"device": SINK},
            },
        ],
        "edges": [{"from": "gen", "to": "sink"}],
    }


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def check_file(path: Path, count: int) -> dict[str, Any]:
    """Read the sink file back (streamed): every seq in 0..count-1 exactly once, in order?"""
    seen = bytearray(count)
    lines = duplicates = out_of_range = 0
    in_order, last = True, -1
    with path.open("rb") as f:
        for line in f:
            seq = orjson.loads(line)["seq"]
            lines += 1
            if not 0 <= seq < count:
                out_of_range += 1
                continue
            if seen[seq]:
                duplicates += 1
            seen[seq] = 1
            in_order = in_order and seq > last
            last = seq
    return {
        "lines": lines,
        "duplicates": duplicates,
        "missing": count - sum(seen),
        "out_of_range": out_of_range,
        "in_order": in_order,
    }


def echo_stream(stack: Stack, count: int, timeout: float, source: str = SOURCE) -> dict[str, Any]:
    pad = padding(count)
    out = stack.workdir / f"stream-sink-{count}.jsonl"
    total = expected_bytes(count, pad)
    avg_record = total / count - 1  # without the newline
    t0 = time.perf_counter()
    df_id = stack.api.submit(spec(count, pad, out, source))
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
        time.sleep(POLL_S)
    df = stack.api.wait_state(df_id, {"completed"}, timeout=max(10.0, timeout - (time.perf_counter() - t0)))
    t_done = time.perf_counter() - t0
    if first is None or last[1] < total:
        raise RuntimeError(f"sink file has {last[1]} of {total} bytes after {timeout}s")
    span = last[0] - first[0]
    records = (last[1] - first[1]) / (avg_record + 1)
    rate = records / span if span > 0 else float("nan")
    keys = ("device", "state", "records_in", "records_out")
    tasks = {t["id"]: {k: t[k] for k in keys} for t in df["tasks"]}
    edge = df["edges"][0]
    check = check_file(out, count)
    out.unlink()
    buckets = rate_timeline(samples, avg_record + 1)
    events = timeline.read_events(stack.logs).get(df_id, [])
    created = df["created_at"]
    finished = {s: round(t - created, 3) for t, s, st in events if st == "finished"}
    return {
        "records": count,
        "record_json_bytes_avg": round(avg_record, 1),
        "record_json_bytes_max": len(orjson.dumps({"seq": count - 1, "pad": pad})),
        "records_per_s": round(rate, 1),
        "mb_per_s": round(rate * avg_record / 1e6, 2),
        "measured_span_s": round(span, 3),
        "first_data_after_post_s": round(first[0] - t0, 3),
        "post_to_completed_s": round(t_done, 3),
        "records_per_s_by_0_5s": buckets,
        "finished_after_created_s": finished,
        "edge": {
            "from": f"gen@{source}",
            "to": f"sink@{SINK}",
            "transport": edge.get("transport"),
            "topic": edge.get("topic"),
        },
        "tasks": tasks,
        "sink_file_check": check,
        "dataflow_state": df["state"],
    }


def rate_timeline(samples: list[tuple[float, int]], line_bytes: float, step: float = 0.5) -> list[int]:
    """Records/s in consecutive ``step``-second buckets from the first sample that saw data
    (the last bucket is divided by its actual length)."""
    if len(samples) < 2:
        return []
    start, end = samples[0][0], samples[-1][0]
    out: list[int] = []
    prev_t, prev_size, i = start, samples[0][1], 0
    while prev_t < end:
        edge = min(prev_t + step, end)
        while i + 1 < len(samples) and samples[i + 1][0] <= edge:
            i += 1
        size = samples[i][1]
        out.append(round((size - prev_size) / line_bytes / (edge - prev_t)))
        prev_t, prev_size = edge, size
    return out


def measured_stream(stack: Stack, count: int, source: str = SOURCE) -> dict[str, Any]:
    log(f"stream edge: {count} records of ~{RECORD_BYTES} B, {source} -> {SINK}")
    echo = echo_stream(stack, count, timeout=180.0, source=source)
    log(
        f"stream edge: {echo['records_per_s']:.0f} records/s over {echo['measured_span_s']} s; "
        f"file check {echo['sink_file_check']}"
    )
    return echo


def steady(stack: Stack, count: int, quick: bool, source: str) -> dict[str, Any]:
    echo = measured_stream(stack, count, source)
    if not quick and echo["measured_span_s"] < MIN_SPAN_S:
        # too short to be a steady-state figure: again with enough records for ~4.5 s
        bigger = min(MAX_RECORDS, -(-int(echo["records_per_s"] * 4.5) // 50_000) * 50_000)
        log(f"stream edge: {echo['measured_span_s']} s is under {MIN_SPAN_S} s; again with {bigger} records")
        first = {k: echo[k] for k in ("records", "records_per_s", "measured_span_s")}
        echo = measured_stream(stack, bigger, source) | {"first_attempt": first}
    return echo


def run(stack: Stack, quick: bool) -> dict[str, Any]:
    count = 50_000 if quick else 200_000
    mqtt_count = 10_000 if quick else 20_000
    nats_count = 50_000 if quick else 100_000
    echo = steady(stack, count, quick, SOURCE)
    over_nats = steady(stack, count, quick, NATS_SOURCE)
    mqtt_auth = raw_brokers.Auth.of(stack.brokers, "mqtt")
    nats_auth = raw_brokers.Auth.of(stack.brokers, "nats")
    log(f"raw mqtt: {mqtt_count} x {RECORD_BYTES} B, QoS 1")
    mqtt = raw_brokers.mqtt_pub_sub(stack.brokers.mqtt_url, mqtt_count, RECORD_BYTES, auth=mqtt_auth)
    log(f"raw mqtt: {mqtt['msgs_per_s']:.0f} msgs/s (max_inflight {raw_brokers.INFLIGHT})")
    sweep = {raw_brokers.INFLIGHT: mqtt["msgs_per_s"]}
    for inflight in SWEEP_INFLIGHT:
        sweep[inflight] = raw_brokers.mqtt_pub_sub(
            stack.brokers.mqtt_url, mqtt_count, RECORD_BYTES, inflight=inflight, auth=mqtt_auth
        )["msgs_per_s"]
        log(f"raw mqtt: {sweep[inflight]:.0f} msgs/s (max_inflight {inflight})")
    best_inflight = max(sweep, key=lambda k: sweep[k])
    log(f"raw nats: {nats_count} x {RECORD_BYTES} B")
    nats = raw_brokers.nats_pub_sub(stack.brokers.nats_url, nats_count, RECORD_BYTES, auth=nats_auth)
    log(f"raw nats: {nats['msgs_per_s']:.0f} msgs/s")
    ratio = echo["records_per_s"] / mqtt["msgs_per_s"] if mqtt["msgs_per_s"] else float("nan")
    best_ratio = echo["records_per_s"] / sweep[best_inflight] if sweep[best_inflight] else float("nan")
    runs = {"mqtt": echo, "nats": over_nats}
    clean = all(
        r["sink_file_check"]["duplicates"] == 0 and r["sink_file_check"]["missing"] == 0
        for r in runs.values()
    )
    vs_nats = {
        t: round(r["records_per_s"] / nats["msgs_per_s"], 3) if nats["msgs_per_s"] else float("nan")
        for t, r in runs.items()
    }
    vs_nats_met = all(vs_nats[t] >= TARGET_VS_RAW_NATS[t] for t in runs)
    transports = {t: r["edge"]["transport"] for t, r in runs.items()}
    return {
        "records_per_s": echo["records_per_s"],
        "records_per_s_over_nats": over_nats["records_per_s"],
        "raw_mqtt_qos1_msgs_per_s": mqtt["msgs_per_s"],
        "raw_nats_msgs_per_s": nats["msgs_per_s"],
        "ratio_vs_raw_mqtt": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ratio_vs_raw_nats": vs_nats,
        "target_vs_raw_nats": TARGET_VS_RAW_NATS,
        "channel_transports": transports,
        "met": bool(ratio >= TARGET_RATIO)
        and bool(best_ratio >= TARGET_RATIO)
        and vs_nats_met
        and clean
        and transports == {"mqtt": "mqtt", "nats": "nats"},
        "raw_mqtt_qos1_by_max_inflight": {str(k): v for k, v in sorted(sweep.items())},
        "raw_mqtt_qos1_best_msgs_per_s": sweep[best_inflight],
        "ratio_vs_best_raw_mqtt": round(best_ratio, 3),
        "exactly_once_at_sink": clean,
        "note": (
            "records_per_s counts records; the raw figures count 256-byte MQTT/NATS messages. A stream "
            "edge coalesces: a record goes at once while nothing of the edge is in flight, and the records "
            "emitted while a message travels go together in the next (at most 256, held at most 5 ms), so "
            "under load it can exceed the per-message raw rate: that is the point. Raw publisher and "
            "subscriber run in separate processes, like ECHO's source and sink agents. "
            "raw_mqtt_qos1_msgs_per_s uses max_inflight 1000 as specified; paho 2.2 scans all outstanding "
            "messages on every PUBACK, so a large window slows paho itself (see "
            "raw_mqtt_qos1_by_max_inflight); met requires every ratio, both transports, exactly once."
        ),
        "echo": echo,
        "echo_over_nats": over_nats,
        "raw_mqtt": mqtt,
        "raw_nats": nats,
    }
