"""File edge: one large file from one agent to another, streamed in checksummed chunks.

``io.dir_source`` on edge-1 over a directory holding one file of random bytes (256 MiB,
``--quick`` 32 MiB; written with ``os.urandom`` in 1 MiB pieces, SHA-256 computed while
writing) -> a ``file`` edge (256 KiB chunks over MQTT QoS 1, at most 8 MiB in flight) ->
``io.dir_sink`` on cloud-1 into an empty directory.

Figures:

- ``end_to_end_mb_per_s``: file size / (POST -> the file present under its name in the
  destination directory; ``io.dir_sink`` links it there only once complete and fsynced);
- ``from_first_byte_mb_per_s``: file size / (the first poll that sees bytes of the
  receiver's ``.part`` file in the sink task's ``incoming`` directory -> file present);
  ``receive_mb_per_s`` stops the clock when the ``.part`` file reaches full size (the
  wire and the receiver alone, without the final fsync and the move into place);
- ``local_copy``: ``shutil.copyfile`` of the same file into another directory on the same
  disk, timed in the same run, and the same with the fsync ``io.dir_sink`` also does
  (the source file is in the page cache for both the copy and ECHO);
- ``raw_mqtt``: plain paho-mqtt QoS 1 pub -> sub of 256 KiB messages with 32 in flight
  (ECHO's chunk size and byte window), as the broker's ceiling for this message size:
  the median of three runs of 64 MiB (the file size if smaller);
- ``processes``: both agents' (and the broker's) resident memory, sampled every 20 ms with
  psutil during the transfer, next to what it was just before the POST, and the CPU time
  each spent (``cpu_pct`` 100 = one core busy for the whole transfer);
- the received file's SHA-256 against the source's (read back from the destination);
- ``incidents``: heartbeat gaps and trouble logged during the transfer (``incidents.py``).

Target: ``end_to_end_mb_per_s`` >= 0.5 x the raw MQTT MB/s; the file arrives intact; and
it is streamed: neither agent grows by more than ``RSS_LIMIT_MB`` (a quarter of the full
run's file), i.e. the file is never held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import incidents
import raw_brokers
from common import Stack, log
from procs import ProcSampler, platform_pids

MIB = 1 << 20
SIZE_FULL, SIZE_QUICK = 256 * MIB, 32 * MIB
RAW_BYTES = 64 * MIB  # the raw MQTT baseline sends this much (or the file size if smaller)
CHUNK = 256 * 1024  # echo_agent.dataplane.files.CHUNK
BYTE_WINDOW = 8 * MIB  # echo_agent.dataplane.files.BYTE_WINDOW
RAW_INFLIGHT = BYTE_WINDOW // CHUNK
RAW_RUNS = 3  # the raw figure is the median of these (one short run is at the mercy of the load)
TARGET_RATIO = 0.5
RSS_LIMIT_MB = 64.0
SOURCE, SINK = "edge-1", "cloud-1"
POLL_S = 0.005
NO_DATA_S = 60.0  # no byte received this long after the POST: the dataflow is stuck
RSS_EVERY_S = 0.02
NAME = "big.bin"


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` (1 MiB at a time); their SHA-256."""
    sha = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(MIB, left))
            sha.update(block)
            f.write(block)
            left -= len(block)
    return sha.hexdigest()


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            sha.update(block)
    return sha.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local_copy(src: Path, dst_dir: Path) -> dict[str, Any]:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    size = src.stat().st_size
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    t_copy = time.perf_counter() - t0
    fsync_file(dst)
    t_sync = time.perf_counter() - t0
    dst.unlink()
    return {
        "seconds": round(t_copy, 3),
        "mb_per_s": round(size / MIB / t_copy, 1),
        "with_fsync_seconds": round(t_sync, 3),
        "with_fsync_mb_per_s": round(size / MIB / t_sync, 1),
    }


def spec(src_dir: Path, dst_dir: Path) -> dict[str, Any]:
    return {
        "name": "file-edge",
        "tasks": [
            {
                "id": "src",
                "operator": "io.dir_source",
                "config": {"path": str(src_dir), "pattern": "*.bin"},
                "placement": {"device": SOURCE},
            },
            {
                "id": "sink",
                "operator": "io.dir_sink",
                "config": {"path": str(dst_dir)},
                "placement": {"device": SINK},
            },
        ],
        "edges": [{"from": "src", "to": "sink", "model": "file"}],
    }


def part_bytes(incoming: Path) -> int:
    """Bytes the receiver holds so far: the largest file in its ``incoming`` directory."""
    best = 0
    try:
        entries = list(os.scandir(incoming))
    except FileNotFoundError:
        return 0
    for e in entries:
        try:
            best = max(best, e.stat().st_size)
        except FileNotFoundError:
            continue
    return best


def transfer(stack: Stack, src_dir: Path, dst_dir: Path, size: int, timeout: float) -> dict[str, Any]:
    target = dst_dir / NAME
    hb = incidents.HeartbeatWatch(stack)
    with ProcSampler(platform_pids(stack, agents=(SOURCE, SINK))) as procs, hb:
        t0_wall, t0 = time.time(), time.perf_counter()
        df_id = stack.api.submit(spec(src_dir, dst_dir))
        incoming = stack.platform.workdir / "agents" / SINK / df_id / "sink" / "incoming"
        t_first: float | None = None
        t_full: float | None = None
        progress: list[tuple[float, int]] = []
        while True:
            now = time.perf_counter()
            if target.exists():
                t_present = now
                break
            got = part_bytes(incoming)
            if got and t_first is None:
                t_first = now
            if got >= size and t_full is None:
                t_full = now
            if got and (not progress or progress[-1][1] != got):
                progress.append((now - t0, got))
            if now - t0 > timeout or (t_first is None and now - t0 > NO_DATA_S):
                df = stack.api.dataflow(df_id)
                stack.api.delete(df_id)
                tasks = {t["id"]: (t["device"], t["state"], t["reason"]) for t in df["tasks"]}
                raise RuntimeError(
                    f"{NAME} not in {dst_dir} {now - t0:.0f} s after POST ({got} bytes "
                    f"received); dataflow {df_id} {df['state']} ({df.get('reason')!r}), "
                    f"tasks {tasks}"
                )
            time.sleep(POLL_S)
        df = stack.api.wait_state(df_id, {"completed"}, timeout=60)
        t_done = time.perf_counter()
    received_sha = sha256_of(target)
    received_size = target.stat().st_size
    mb = size / MIB
    end_to_end = t_present - t0
    out: dict[str, Any] = {
        "dataflow": df_id,
        "post_to_present_s": round(end_to_end, 3),
        "post_to_completed_s": round(t_done - t0, 3),
        "end_to_end_mb_per_s": round(mb / end_to_end, 1),
        "first_byte_after_post_s": round(t_first - t0, 3) if t_first is not None else None,
        "from_first_byte_mb_per_s": round(mb / (t_present - t_first), 1) if t_first is not None else None,
        "receive_mb_per_s": (
            round(mb / (t_full - t_first), 1)
            if t_first is not None and t_full is not None and t_full > t_first
            else None
        ),
        "full_part_to_present_s": round(t_present - t_full, 3) if t_full is not None else None,
        "received_mb_by_0_5s": mb_timeline(progress),
        "received_size": received_size,
        "received_sha256": received_sha,
        "processes": procs.figures(),
        "rss_samples": procs.samples,
        "incidents": {
            "heartbeats": {k: v for k, v in hb.figures().items() if k in (SOURCE, SINK)},
            "logs": incidents.scan(stack.logs, t0_wall, time.time()),
        },
        "tasks": {
            t["id"]: {k: t[k] for k in ("device", "state", "records_in", "records_out")} for t in df["tasks"]
        },
        "edge": {k: df["edges"][0].get(k) for k in ("model", "transport", "topic")},
        "dataflow_state": df["state"],
    }
    target.unlink()
    return out


def mb_timeline(progress: list[tuple[float, int]], step: float = 0.5) -> list[float]:
    """MiB/s received in consecutive ``step``-second buckets, from the first sample with bytes."""
    if len(progress) < 2:
        return []
    start, end = progress[0][0], progress[-1][0]
    out: list[float] = []
    t, prev, i = start, progress[0][1], 0
    while t < end:
        edge = min(t + step, end)
        while i + 1 < len(progress) and progress[i + 1][0] <= edge:
            i += 1
        out.append(round((progress[i][1] - prev) / MIB / (edge - t), 1))
        t, prev = edge, progress[i][1]
    return out


def run(stack: Stack, quick: bool) -> dict[str, Any]:
    size = SIZE_QUICK if quick else SIZE_FULL
    base = stack.workdir / "file-edge"
    src_dir, copy_dir, dst_dir = base / "src", base / "copy", base / "dst"
    src_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / NAME
    try:
        log(f"file edge: writing {size // MIB} MiB of random bytes to {src}")
        source_sha = write_random(src, size)
        copy = local_copy(src, copy_dir)
        log(f"file edge: local copy {copy['mb_per_s']} MiB/s ({copy['with_fsync_mb_per_s']} with fsync)")
        log(f"file edge: {SOURCE} -> {SINK} over a file edge")
        echo = transfer(stack, src_dir, dst_dir, size, timeout=300.0)
        log(
            f"file edge: {echo['end_to_end_mb_per_s']} MiB/s end to end, "
            f"{echo['from_first_byte_mb_per_s']} from the first byte; processes {echo['processes']}"
        )
        raw_count = min(size, RAW_BYTES) // CHUNK
        raws: list[dict[str, Any]] = []
        for i in range(RAW_RUNS):
            url = stack.brokers.mqtt_url
            auth = raw_brokers.Auth.of(stack.brokers, "mqtt")
            raws.append(raw_brokers.mqtt_pub_sub(url, raw_count, CHUNK, inflight=RAW_INFLIGHT, auth=auth))
            log(
                f"raw mqtt {i + 1}/{RAW_RUNS}: {raw_count} x {CHUNK // 1024} KiB, QoS 1, "
                f"{RAW_INFLIGHT} in flight: {raws[-1]['msgs_per_s'] * CHUNK / MIB:.1f} MiB/s"
            )
        raw = sorted(raws, key=lambda r: r["msgs_per_s"])[len(raws) // 2]  # the median run
        raw_mb = raw["msgs_per_s"] * CHUNK / MIB
    finally:
        shutil.rmtree(base, ignore_errors=True)
    agent_cpu = sum(v["cpu_s"] for k, v in echo["processes"].items() if k.startswith("agent-"))
    intact = echo["received_sha256"] == source_sha and echo["received_size"] == size
    growth = {k: v["rss_growth_mb"] for k, v in echo["processes"].items() if k.startswith("agent-")}
    streamed = all(g <= RSS_LIMIT_MB for g in growth.values())
    ratio = echo["end_to_end_mb_per_s"] / raw_mb if raw_mb else float("nan")
    return {
        "file_mb": size // MIB,
        "end_to_end_mb_per_s": echo["end_to_end_mb_per_s"],
        "from_first_byte_mb_per_s": echo["from_first_byte_mb_per_s"],
        "local_copy_mb_per_s": copy["mb_per_s"],
        "local_copy_with_fsync_mb_per_s": copy["with_fsync_mb_per_s"],
        "raw_mqtt_qos1_256k_mb_per_s": round(raw_mb, 1),
        "raw_mqtt_qos1_256k_mb_per_s_runs": [round(r["msgs_per_s"] * CHUNK / MIB, 1) for r in raws],
        "ratio_vs_raw_mqtt": round(ratio, 3),
        "ratio_vs_local_copy": round(echo["end_to_end_mb_per_s"] / copy["mb_per_s"], 3),
        "mb_per_agent_cpu_s": round(size / MIB / agent_cpu, 1) if agent_cpu > 0 else None,
        "sha256_match": intact,
        "source_sha256": source_sha,
        "agent_rss_growth_mb": growth,
        "streamed": streamed,
        "target": {
            "ratio_vs_raw_mqtt": TARGET_RATIO,
            "sha256_match": True,
            "agent_rss_growth_mb_max": RSS_LIMIT_MB,
        },
        "met": bool(ratio >= TARGET_RATIO) and intact and streamed,
        "units": "MB here is MiB (2^20 bytes)",
        "method": (
            f"io.dir_source on {SOURCE} -> file edge -> io.dir_sink on {SINK}; end to end = POST -> the file "
            "present in the destination directory (io.dir_sink places it only once complete and fsynced); "
            "from first byte = the first poll (5 ms) seeing bytes in the sink task's incoming .part file -> "
            "present; the local copy is shutil.copyfile of the same (page-cached) file on the same disk; raw "
            f"MQTT = paho QoS 1, {CHUNK // 1024} KiB messages, {RAW_INFLIGHT} in flight (ECHO's chunk and "
            "byte window), publisher and subscriber in separate processes, median of 3 runs; RSS sampled "
            "every 20 ms with psutil (CPU time too); the received file is read back and hashed."
        ),
        "local_copy": copy,
        "echo": echo,
        "raw_mqtt": raw,
    }
