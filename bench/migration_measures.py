"""What the migration benchmark measures with: figures from sink arrivals, and the raw broker.

- From the sink's arrival times: the largest gap between consecutive arrivals around a
  migration or a kill (the downtime), every sink stall over a threshold, and the sink's
  records per second; and a summary of ms values (n, p50, p99, max, min, mean).
- The raw broker's round trip it is set next to, no ECHO code: publish -> receive of one
  message at a time on the bench's brokers, QoS 1 MQTT 5 (paho, through ``raw_brokers``'
  client helpers) and core NATS (nats-py).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import threading
import time
import uuid
from typing import Any

import nats

from common import percentile
from raw_brokers import Auth, _connect, _mqtt_client

# ------------------------------------------------------------------ sink arrivals


def stats_ms(values_ms: list[float]) -> dict[str, Any]:
    if not values_ms:
        return {"n": 0}
    return {
        "n": len(values_ms),
        "p50": round(percentile(values_ms, 50), 1),
        "p99": round(percentile(values_ms, 99), 1),
        "max": round(max(values_ms), 1),
        "min": round(min(values_ms), 1),
        "mean": round(sum(values_ms) / len(values_ms), 1),
    }


def max_gap(times: list[float], start: float, end: float) -> float | None:
    """Largest gap between consecutive arrivals from the last one <= start to the first >= end."""
    if not times:
        return None
    lo = max(0, bisect.bisect_right(times, start) - 1)
    hi = min(len(times) - 1, bisect.bisect_left(times, end))
    if hi <= lo:
        return None
    return max(b - a for a, b in itertools.pairwise(times[lo : hi + 1]))


def stalls(times: list[float], origin: float, over: float = 1.0) -> list[dict[str, float]]:
    """Every gap longer than ``over`` s between consecutive sink arrivals (s from ``origin``)."""
    return [
        {"from_s": round(a - origin, 3), "to_s": round(b - origin, 3), "gap_s": round(b - a, 3)}
        for a, b in itertools.pairwise(times)
        if b - a > over
    ]


def per_second(times: list[float], origin: float) -> list[int]:
    """Sink records arrived in each second from ``origin``."""
    if not times:
        return []
    out = [0] * (int(times[-1] - origin) + 1)
    for t in times:
        if t >= origin:
            out[int(t - origin)] += 1
    return out


# ------------------------------------------------------------------ raw brokers


def mqtt_latency(url: str, samples: int, auth: Auth | None = None) -> dict[str, Any]:
    """Publish -> receive of one QoS 1 message at a time (64 bytes), paho, MQTT 5."""
    topic = f"bench/mig-rtt/{uuid.uuid4().hex[:8]}"
    got = threading.Event()
    subscribed = threading.Event()
    sub = _mqtt_client(f"bench-rtt-sub-{uuid.uuid4().hex[:8]}")
    pub = _mqtt_client(f"bench-rtt-pub-{uuid.uuid4().hex[:8]}")
    sub.on_message = lambda *_a: got.set()
    sub.on_subscribe = lambda *_a: subscribed.set()
    out: list[float] = []
    try:
        _connect(sub, url, auth=auth)
        _connect(pub, url, auth=auth)
        sub.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("raw mqtt: not subscribed")
        for _ in range(samples):
            got.clear()
            t0 = time.perf_counter()
            pub.publish(topic, b"x" * 64, qos=1)
            if not got.wait(5):
                continue
            out.append((time.perf_counter() - t0) * 1000.0)
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
    return stats_ms(out) | {"lost": samples - len(out), "what": "MQTT 5 QoS 1 publish -> receive, 64 B"}


def nats_latency(url: str, samples: int, auth: Auth | None = None) -> dict[str, Any]:
    """Publish -> receive of one core NATS message at a time (64 bytes)."""

    async def main() -> list[float]:
        nc = await nats.connect(url, **(auth.nats_options(url) if auth else {}))
        subject = f"bench.mig-rtt.{uuid.uuid4().hex[:8]}"
        got = asyncio.Event()

        async def on_msg(_m: Any) -> None:
            got.set()

        await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        out: list[float] = []
        try:
            for _ in range(samples):
                got.clear()
                t0 = time.perf_counter()
                await nc.publish(subject, b"x" * 64)
                try:
                    await asyncio.wait_for(got.wait(), 5)
                except TimeoutError:
                    continue
                out.append((time.perf_counter() - t0) * 1000.0)
        finally:
            await nc.close()
        return out

    out = asyncio.run(main())
    return stats_ms(out) | {"lost": samples - len(out), "what": "core NATS publish -> receive, 64 B"}
