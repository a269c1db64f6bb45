"""The web console at fleet size: time to first render of a dataflow's page in Chromium.

A stack of its own with 1,000 devices registered in its registry (700 edge, 200 fog, 100
cloud; heartbeats with CPU/memory) and a 200-task dataflow submitted over REST and placed
on them by the scheduler (there are no agents: the tasks stay deploying, which the page
draws all the same). Chromium (Debian's, headless, via Selenium) logs in once through a
one-time code, then loads the dataflow's page ``runs`` times; "first render" is the page's
own ``echo-rendered`` performance mark (navigation start -> HTML, scripts, the API calls
with the 1,000 devices, the SVG of 200 tasks in their device lanes in the DOM). Also the
devices page (1,000 rows). Target: <= 1 s.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import Stack, log, running_stack
from echo_registry.store import DeviceStore
from echo_shared.models import Capacity, DeviceInfo
from echo_shared.names import Names
from echo_shared.redis_store import connect_redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.harness.browser import chromium, css, rendered, screenshot

TARGET_S = 1.0
DEVICES = 1_000
TASKS = 200


def tier_of(i: int) -> str:
    return "edge" if i < 700 else "fog" if i < 900 else "cloud"


async def seed(stack: Stack) -> None:
    names = Names(stack.platform.namespace)
    redis = await connect_redis(stack.brokers.redis_url, access=stack.brokers.access("tester"))
    try:
        devices = DeviceStore(redis, names)
        now = time.time()
        for i in range(DEVICES):
            info = DeviceInfo(
                id=f"dev-{i:04d}",
                tier=tier_of(i),
                capacity=Capacity(cpu=4.0, memory_mb=8192),
                runtimes=["python"],
                input_streams=[f"cam-{i}"] if i < 700 else [],
            )
            await devices.register(info, "boot", now)
            await devices.heartbeat(info.id, now, 10.0 + i % 70, 20.0 + i % 50, 0, {"mqtt": 3.0})
    finally:
        await redis.aclose()


def spec() -> dict[str, Any]:
    """200 tasks in four layers (40 sources on edge devices, 80 + 60 on fog, 20 on cloud),
    each on a device of its own (200 lanes), each fed by one of the layer before."""
    layers = [
        ("src", 40, "io.generate", 0),
        ("a", 80, "core.passthrough", 700),
        ("b", 60, "core.passthrough", 780),
        ("sink", 20, "core.passthrough", 900),
    ]
    tasks: list[dict[str, Any]] = []
    edges: list[dict[str, str]] = []
    prev: list[str] = []
    for prefix, n, op, first in layers:
        ids = [f"{prefix}{k}" for k in range(n)]
        for k, tid in enumerate(ids):
            task: dict[str, Any] = {
                "id": tid,
                "operator": op,
                "placement": {"device": f"dev-{first + k:04d}"},
            }
            if op == "io.generate":
                task["config"] = {"count": 10, "rate": 1}
            tasks.append(task)
            if prev:
                edges.append({"from": prev[k % len(prev)], "to": tid})
        prev = ids
    return {"name": "console-scale", "tasks": tasks, "edges": edges}


def run(stack: Stack | None, quick: bool) -> dict[str, Any]:
    runs = 3 if quick else 10
    with running_stack(metrics=False, fleet=()) as s:
        log(f"console: seeding {DEVICES} devices")
        asyncio.run(seed(s))
        df_id = s.api.submit(spec())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # placed: every task has a device
            df = s.api.dataflow(df_id)
            if all(t["device"] for t in df["tasks"]):
                break
            time.sleep(0.2)  # a benchmark's pacing, not a test
        else:
            raise RuntimeError(f"the {TASKS}-task dataflow was not placed within 60 s")
        lanes = len({t["device"] for t in df["tasks"]})
        r = s.api.http.post("/api/v1/console/codes")
        r.raise_for_status()
        url = s.platform.api_url + r.json()["path"]
        cert = s.brokers.bundle.server.cert if s.brokers.bundle is not None and s.platform.api_tls else None
        page = f"{s.platform.api_url}/ui/dataflows/{df_id}"
        marks: list[float] = []
        device_marks: list[float] = []
        with chromium(cert) as b:
            b.get(url)  # the session cookie
            rendered(b, timeout=30)
            for _ in range(runs):
                b.get(page)
                rendered(b, timeout=30)
                drawn = len(css(b, "g.task"))
                if drawn != TASKS:
                    raise RuntimeError(f"the page drew {drawn} tasks, not {TASKS}")
                marks.append(
                    b.execute_script("return performance.getEntriesByName('echo-rendered')[0].startTime")
                )
            screenshot(b, "scale-dataflow")
            for _ in range(max(2, runs // 2)):
                b.get(f"{s.platform.api_url}/ui/devices")
                rendered(b, timeout=30)
                device_marks.append(
                    b.execute_script("return performance.getEntriesByName('echo-rendered')[0].startTime")
                )
    marks.sort()
    device_marks.sort()
    out = {
        "devices": DEVICES,
        "tasks": TASKS,
        "lanes": lanes,
        "dataflow_page_first_render_ms": {
            "p50": round(statistics.median(marks), 1),
            "max": round(marks[-1], 1),
            "runs": len(marks),
        },
        "devices_page_first_render_ms": {
            "p50": round(statistics.median(device_marks), 1),
            "max": round(device_marks[-1], 1),
            "runs": len(device_marks),
        },
        "target": f"dataflow page first render <= {TARGET_S * 1000:.0f} ms",
        "met": statistics.median(marks) <= TARGET_S * 1000,
    }
    log(f"console: {out}")
    return out
