"""Platform trouble during a benchmark run, beside its figures.

- ``HeartbeatWatch`` subscribes to every agent's heartbeat topic and records, per device,
  the agent's own timestamp of each heartbeat (``Heartbeat.ts``, taken on the agent's
  event loop when it builds the message) and its arrival here. A gap between consecutive
  agent timestamps much longer than the interval (1 s) means the agent's event loop did
  not get to its heartbeat for that long (loop lag); arrival - ts is the transit delay.
- ``scan`` picks from the platform's logs, within a wall-clock window, what should not
  happen in a healthy run: devices marked unreachable, dataflows falling back from
  ``running``, commands not acked in time, channels retransmitting or asking for resends,
  and any warning or error line.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from common import Stack
from raw_brokers import Auth, _connect, _mqtt_client

PATTERNS = {
    "device_unreachable": re.compile(r"online -> unreachable"),
    "dataflow_left_running": re.compile(r"dataflow \S+: running -> (?!completed|stopping)"),
    "command_not_acked": re.compile(r"did not ack"),
    "retransmissions": re.compile(r"sending .* again|send again from|sending again from"),
}


class HeartbeatWatch:
    def __init__(self, stack: Stack) -> None:
        self.topic = f"{stack.platform.namespace}/dev/+/hb"
        self.url = stack.brokers.mqtt_url
        self.auth = Auth.of(stack.brokers, "mqtt")
        self.beats: dict[str, list[tuple[float, float]]] = {}  # device -> (agent ts, arrival)
        self.client = _mqtt_client(f"bench-hb-{uuid.uuid4().hex[:8]}")

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        now = time.time()
        try:
            hb = orjson.loads(m.payload)
            self.beats.setdefault(str(hb["device"]), []).append((float(hb["ts"]), now))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return

    def __enter__(self) -> HeartbeatWatch:
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        _connect(self.client, self.url, auth=self.auth)
        self.client.subscribe(self.topic, qos=0)
        subscribed.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for device, beats in sorted(self.beats.items()):
            ts = [b[0] for b in beats]
            gaps = [b - a for a, b in itertools.pairwise(ts)]
            transit = [arr - t for t, arr in beats]
            out[device] = {
                "heartbeats": len(beats),
                "max_gap_s": round(max(gaps), 2) if gaps else None,
                "gaps_over_2s": sum(1 for g in gaps if g > 2.0),
                "max_transit_s": round(max(transit), 3) if transit else None,
            }
        return out


class ChannelWatch:
    """Counts the progress reports and resend requests on every data channel of the platform.

    A consumer reports its high-water mark on ``<channel>/progress`` (retained) and asks for
    lost records on ``<channel>/resend``; many more reports than records, or a high-water
    mark that stops moving while the producer retransmits, point at a channel in trouble.
    """

    def __init__(self, stack: Stack) -> None:
        ns = stack.platform.namespace
        self.topics = [f"{ns}/df/+/+/+/progress", f"{ns}/df/+/+/+/resend"]
        self.url = stack.brokers.mqtt_url
        self.auth = Auth.of(stack.brokers, "mqtt")
        self.channels: dict[str, dict[str, Any]] = {}
        self.client = _mqtt_client(f"bench-ch-{uuid.uuid4().hex[:8]}")

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        if m.retain or not m.payload:
            return  # a report left from before the run, or a cleared one
        parts = m.topic.split("/")
        key = f"{parts[2]}:{parts[3]}->{parts[4]}"
        ch = self.channels.setdefault(key, {"progress_reports": 0, "hwm": 0, "resend_requests": 0})
        try:
            body = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            return
        if parts[-1] == "resend":
            ch["resend_requests"] += 1
        else:
            ch["progress_reports"] += 1
            ch["hwm"] = max(ch["hwm"], int(body.get("hwm", 0)))

    def __enter__(self) -> ChannelWatch:
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        _connect(self.client, self.url, auth=self.auth)
        self.client.subscribe([(t, 0) for t in self.topics])
        subscribed.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def figures(self, dataflow: str) -> dict[str, Any]:
        prefix = f"{dataflow}:"
        return {k[len(prefix) :]: v for k, v in sorted(self.channels.items()) if k.startswith(prefix)}


def _ts(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def scan(logs: Path, start: float, end: float, keep: int = 6) -> dict[str, Any]:
    """Counts (and the first ``keep`` lines) of each kind of trouble logged in [start, end]."""
    counts = dict.fromkeys([*PATTERNS, "warnings_or_errors"], 0)
    first: list[str] = []
    for path in sorted(logs.glob("*.log")):
        for line in path.read_bytes().splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                obj = orjson.loads(line)
                t = _ts(obj["ts"])
            except (orjson.JSONDecodeError, KeyError, ValueError):
                continue
            if not start <= t <= end:
                continue
            msg = str(obj.get("msg", ""))
            hits = [k for k, rx in PATTERNS.items() if rx.search(msg)]
            if str(obj.get("level", "")).lower() in ("warning", "error", "critical"):
                hits.append("warnings_or_errors")
            for k in hits:
                counts[k] += 1
            if hits and len(first) < keep:
                first.append(f"{obj['ts']} {path.stem}: {msg[:240]}")
    return {"counts": counts, "first": first, "clean": not any(counts.values())}
