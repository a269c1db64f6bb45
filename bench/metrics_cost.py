"""What metrics cost, and how long a scrape takes at fleet size.

1. ``stream``: one cross-agent stream edge's records/s (the ``stream_edge`` measurement) on
   a stack whose services serve ``/metrics`` with Prometheus scraping them every 5 s (the dev
   stack's interval; compose scrapes every 10 s) next to the same stack without metrics
   endpoints nor Prometheus (``Platform(metrics=False)``). The agents' per-edge counters
   are always on (two additions per message). Target: metrics cost <= 5 %.
2. ``scrape``: the master's and the registry's ``/metrics`` with 1,000 devices and 1,000
   dataflows of 5 tasks each (5,000 tasks, 4,000 edges) in a real Redis: the time to read
   the records and render the exposition (what a scrape waits for), its size and series.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import generate_latest

import stream_edge
from common import Stack, log, running_stack
from echo_master.metrics import MasterMetrics
from echo_master.store import DataflowStore
from echo_registry.metrics import registry_metrics
from echo_registry.store import DeviceStore
from echo_shared.models import Capacity, DataflowSpec, DeviceInfo, TaskState
from echo_shared.names import Names
from echo_shared.redis_store import connect_redis

TARGET = 0.05
SCRAPE_S = 5.0  # the dev stack's scrape interval (compose: 10 s)
DEVICES = 1_000
DATAFLOWS = 1_000
TASKS_PER_DATAFLOW = 5


def stream_rate(metrics: bool, quick: bool) -> dict[str, Any]:
    what = f"with metrics (endpoints + Prometheus every {SCRAPE_S:g} s)" if metrics else "without metrics"
    log(f"metrics cost: a stack {what}")
    with running_stack(metrics=metrics) as stack:
        if metrics:
            stack.platform.start_prometheus(interval=SCRAPE_S)
        count = 50_000 if quick else 100_000
        runs = [stream_edge.measured_stream(stack, count) for _ in range(1 if quick else 3)]
    rates = sorted(r["records_per_s"] for r in runs)
    clean = all(
        r["sink_file_check"]["duplicates"] == 0 and r["sink_file_check"]["missing"] == 0 for r in runs
    )
    out = {"records_per_s": rates[len(rates) // 2], "runs_records_per_s": rates, "clean": clean}
    log(f"metrics cost: {what}: {out}")
    return out


@contextlib.contextmanager
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop on a thread of its own (a service's loop; scrapes come from elsewhere)."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


def _spec(i: int) -> DataflowSpec:
    tasks = [{"id": f"t{k}", "operator": "core.passthrough"} for k in range(TASKS_PER_DATAFLOW)]
    tasks[0]["operator"] = "io.generate"
    edges = [{"from": f"t{k}", "to": f"t{k + 1}"} for k in range(TASKS_PER_DATAFLOW - 1)]
    return DataflowSpec.model_validate({"name": f"df{i}", "tasks": tasks, "edges": edges})


async def seed(stack: Stack, names: Names) -> None:
    redis = await connect_redis(stack.brokers.redis_url, access=stack.brokers.access("tester"))
    try:
        devices = DeviceStore(redis, names)
        now = time.time()
        for i in range(DEVICES):
            info = DeviceInfo(id=f"dev-{i:04d}", tier="edge" if i % 3 else "fog", capacity=Capacity())
            await devices.register(info, "boot", now)
            await devices.heartbeat(info.id, now, 12.5, 40.0, 1, {"mqtt": 3.2})
        store = DataflowStore(redis, names)
        for i in range(DATAFLOWS):
            df_id = await store.create(_spec(i))
            patches = []
            for k in range(TASKS_PER_DATAFLOW):
                patch: dict[str, Any] = {
                    "device": f"dev-{(i * TASKS_PER_DATAFLOW + k) % DEVICES:04d}",
                    "state": TaskState.running,
                    "generation": 1,
                    "records_in": 1000 * k,
                    "records_out": 1000 * (k + 1),
                    "out_seq": 1000 * (k + 1),
                    "hwm": {f"t{k - 1}": 1000 * k - 7} if k else {},
                }
                if k < TASKS_PER_DATAFLOW - 1:
                    patch["channels"] = {
                        f"t{k + 1}": {"transport": "mqtt", "messages": 1000, "bytes": 256_000}
                    }
                patches.append((f"t{k}", patch, None))
            await store.patch_tasks(df_id, patches)
    finally:
        await redis.aclose()


def time_scrape(registry: Any, runs: int) -> dict[str, Any]:
    times, body = [], b""
    for _ in range(runs):
        t0 = time.perf_counter()
        body = generate_latest(registry)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    lines = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    return {
        "p50_ms": round(times[len(times) // 2], 1),
        "max_ms": round(times[-1], 1),
        "bytes": len(body),
        "series": len(lines),
    }


def scrape(stack: Stack, quick: bool) -> dict[str, Any]:
    names = Names("s" + uuid.uuid4().hex[:8])  # a namespace of its own in the stack's Redis
    log(f"metrics scrape: seeding {DEVICES} devices and {DATAFLOWS} x {TASKS_PER_DATAFLOW} tasks")
    t0 = time.monotonic()
    asyncio.run(seed(stack, names))
    log(f"metrics scrape: seeded in {time.monotonic() - t0:.1f} s")
    runs = 3 if quick else 10
    with loop_thread() as loop:
        redis = asyncio.run_coroutine_threadsafe(
            connect_redis(stack.brokers.redis_url, access=stack.brokers.access("tester")), loop
        ).result(30)
        try:
            master = MasterMetrics(DataflowStore(redis, names), loop)
            registry = registry_metrics(DeviceStore(redis, names), loop)
            out = {
                "master": time_scrape(master.registry, runs),
                "registry": time_scrape(registry, runs),
            }
        finally:
            asyncio.run_coroutine_threadsafe(redis.aclose(), loop).result(10)
    log(f"metrics scrape: {out}")
    return out


def run(stack: Stack | None, quick: bool) -> dict[str, Any]:
    """Stacks of its own (one at a time: 2 cores); the scrape part uses the second one."""
    on = stream_rate(True, quick)
    off = stream_rate(False, quick)
    cost = 1 - on["records_per_s"] / off["records_per_s"] if off["records_per_s"] else None
    with running_stack(metrics=False, fleet=()) as bare:
        scrapes = scrape(bare, quick)
    return {
        "stream_with_metrics": on,
        "stream_without_metrics": off,
        "stream_rate_cost": round(cost, 3) if cost is not None else None,
        "scrape_1000_devices_5000_tasks": scrapes,
        "target": f"metrics cost <= {TARGET:.0%} of stream records/s",
        "met": cost is not None and cost <= TARGET and on["clean"] and off["clean"],
    }
