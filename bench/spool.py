"""The on-disk spool of a cut-off edge: how fast it takes and gives back messages, and what
it costs on disk, against plain buffered file writes of the same bytes in the same run.

For each fsync policy (``checkpoint``: synced once per second, as a task's local checkpoint
does; ``never``; ``always``: after every message), N stream messages of a ~256-byte record
(the exact JSON ``encode_records`` makes) are appended to a fresh spool in a temp dir, then
read back in order (``next()``), then released (the consumer confirmed them). Reported:
messages/s and MB/s for the append and the read, bytes on disk per message while spooled,
and bytes left after the release (space reclaimed: 0). The raw baseline writes the same
payloads with a 16-byte length prefix to one buffered file (``checkpoint``-like: one fsync
per second of writing).

A sensor at 500 records/s cut off for 24 h spools 43.2 M messages: ``disk_per_day_gib``
says how much disk that takes at the measured bytes per message (the 1 GiB default limit
holds ``default_limit_hours`` of it).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from echo_agent.dataplane.spool import Entry, Spool
from echo_shared.codec import encode_records

RECORD = {"ride": 0, "city": "nyc", "fare": 12.5, "pad": "x" * 180}
SENSOR_RATE = 500


def payloads(n: int) -> list[bytes]:
    return [encode_records("gen", 1, [(i, {**RECORD, "ride": i})]) for i in range(1, n + 1)]


def raw_baseline(directory: Path, msgs: list[bytes]) -> dict[str, Any]:
    path = directory / "raw.bin"
    t0 = time.perf_counter()
    last_sync = t0
    with open(path, "wb", buffering=256 << 10) as f:
        for i, p in enumerate(msgs):
            f.write(len(p).to_bytes(8, "little") + i.to_bytes(8, "little"))
            f.write(p)
            now = time.perf_counter()
            if now - last_sync >= 1.0:
                f.flush()
                os.fsync(f.fileno())
                last_sync = now
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    size = path.stat().st_size
    path.unlink()
    return {"msgs_per_s": round(len(msgs) / dt), "mb_per_s": round(size / dt / 1e6, 1)}


def one_policy(directory: Path, msgs: list[bytes], fsync: str) -> dict[str, Any]:
    spool = Spool(directory / fsync, max_bytes=1 << 40, fsync=fsync)  # type: ignore[arg-type]
    spool.open()
    t0 = time.perf_counter()
    last_sync = t0
    for i, p in enumerate(msgs, start=1):
        spool.append(i, i, 1, p)
        if fsync == "checkpoint":
            now = time.perf_counter()
            if now - last_sync >= 1.0:  # a local checkpoint per second syncs the spool
                spool.sync()
                last_sync = now
    spool.sync()
    t_append = time.perf_counter() - t0
    on_disk = sum(f.stat().st_size for f in (directory / fsync).glob("*.seg"))
    t0 = time.perf_counter()
    n = 0
    while (item := spool.next()) is not None:
        assert isinstance(item, Entry) and item.last == n + 1, "out of order"
        n += 1
    t_read = time.perf_counter() - t0
    assert n == len(msgs), f"read {n} of {len(msgs)}"
    spool.release(len(msgs))
    left = sum(f.stat().st_size for f in (directory / fsync).glob("*.seg"))
    spool.close(remove=True)
    per_msg = on_disk / len(msgs)
    return {
        "append_msgs_per_s": round(len(msgs) / t_append),
        "append_mb_per_s": round(on_disk / t_append / 1e6, 1),
        "read_msgs_per_s": round(n / t_read),
        "bytes_on_disk_per_msg": round(per_msg, 1),
        "payload_bytes_per_msg": round(sum(map(len, msgs)) / len(msgs), 1),
        "bytes_left_after_release": left,
        "disk_per_day_gib": round(per_msg * SENSOR_RATE * 86400 / (1 << 30), 2),
        "default_limit_hours": round((1 << 30) / (per_msg * SENSOR_RATE) / 3600, 1),
    }


def run(_stack: object, quick: bool) -> dict[str, Any]:
    n = 50_000 if quick else 300_000
    msgs = payloads(n)
    with tempfile.TemporaryDirectory(prefix="echo-spool-bench-") as d:
        directory = Path(d)
        raw = raw_baseline(directory, msgs)
        policies = {
            p: one_policy(directory, msgs if p != "always" else msgs[: n // 10], p)
            for p in ("checkpoint", "never", "always")
        }
    ratio = policies["checkpoint"]["append_msgs_per_s"] / raw["msgs_per_s"]
    return {
        "messages": n,
        "raw_file": raw,
        "spool": policies,
        "ratio_append_to_raw": round(ratio, 2),
        "note": "always: a tenth of the messages (an fsync each)",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(None, "--quick" in sys.argv), indent=2))
