"""Brokers killed (-9) under steady flow, and started again: nothing lost or duplicated at
the sink, counts intact, the dataflow completes, no device falsely declared lost, every
process alive, and while a dependency is down the API says so (503 naming it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import FLEET, Stack
from tests.e2e.test_migration import check_exactly_once, counting, read_jsonl
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

RATE = 500.0


def flow(out: Path, count: int) -> dict[str, Any]:
    """The migration tests' counting dataflow, its source on the edge: edge -> fog (a
    stateful count) -> cloud, 500 records/s."""
    spec = counting(out, count, RATE)
    spec["tasks"][0]["placement"] = {"device": "edge-1"}
    return spec


def outage(seconds: float, during: Callable[[], None] | None = None) -> None:
    """Let an outage last ``seconds`` (polling the clock, doing ``during`` meanwhile)."""
    end = time.monotonic() + seconds

    def over() -> bool:
        if during is not None:
            during()
        return time.monotonic() >= end

    wait_until(over, timeout=seconds + 30, interval=0.1, what=f"{seconds:.0f} s of outage")


def steady(s: Stack, out: Path, count: int) -> str:
    df_id = s.api.submit(flow(out, count))
    s.api.wait_state(df_id, "running", timeout=60)
    wait_until(lambda: len(read_jsonl(out)) >= 500, timeout=30, what="records flowing to the sink")
    return df_id


def converged(s: Stack, df_id: str, out: Path, count: int, before: dict[str, dict[str, Any]]) -> None:
    s.api.wait_state(df_id, "completed", timeout=120)
    check_exactly_once(out, count)
    after = s.api.devices()
    for a in FLEET:
        d = after[a.device_id]
        assert d["status"] == "online", d
        assert d["status_since"] == before[a.device_id]["status_since"], (
            f"{a.device_id} changed status meanwhile"
        )
    for name, p in {**s.platform.services, **s.platform.agents}.items():
        assert p.alive(), f"{name} exited: {p.log_tail()}"
    for name, p in s.brokers.processes.items():
        assert p.alive(), f"broker {name} exited"


def spooled(s: Stack, df_id: str, producer: str) -> None:
    """The edge out of ``producer`` spooled while its broker was away, and drained it all."""
    edge = next(e for e in s.api.dataflow(df_id)["edges"] if e["from"] == producer)
    assert edge["spooled"] > 0 and edge["spool_bytes"] == 0 and edge["dropped"] == 0, edge


def tracebacks(s: Stack) -> int:
    return sum(log.read_text(errors="replace").count("Traceback") for log in s.platform.logs.glob("*.log"))


def test_redis_killed_and_back(stack: Stack, tmp_path: Path) -> None:
    s, out, total = stack, tmp_path / "out.jsonl", 8_000
    df_id = steady(s, out, total)
    before = s.api.devices()
    s.brokers.kill("redis")
    seen: dict[str, Any] = {}

    def probe() -> None:
        with httpx.Client(base_url=s.platform.api_url, verify=s.platform.api_verify, timeout=3) as c:
            r = c.get("/api/v1/dataflows", headers=s.platform.http_headers())
            if r.status_code >= 500:
                seen.setdefault("api", (r.status_code, r.json()["detail"]))
            h = c.get("/healthz")
            if h.status_code == 503:
                seen.setdefault("healthz", h.json())

    outage(5.0, probe)
    s.brokers.restart("redis")
    # the API named the dependency: 503, never a 500
    assert seen.get("api") is not None and seen["api"][0] == 503, seen
    assert "redis" in seen["api"][1] or "token" in seen["api"][1], seen
    assert seen["healthz"]["dependencies"]["redis"] == "down", seen
    converged(s, df_id, out, total, before)
    # the migrator lived through it: a move still works
    df2 = s.api.submit(flow(tmp_path / "out2.jsonl", 10**9))
    s.api.wait_state(df2, "running", timeout=60)
    here = next(t for t in s.api.dataflow(df2)["tasks"] if t["id"] == "count")["device"]
    r = s.api.http.post(
        f"/api/v1/dataflows/{df2}/tasks/count/migrate",
        json={"device": "fog-2" if here == "fog-1" else "fog-1"},
    )
    assert r.status_code == 202, r.text
    mid = r.json()["migration"]
    wait_until(
        lambda: s.api.http.get(f"/api/v1/migrations/{mid}").json()["state"] == "completed",
        timeout=45,
        what="a migration after the outage",
    )
    assert tracebacks(s) == 0, "an outage is logged as a state change, not with tracebacks"


def test_mosquitto_killed_and_back(stack: Stack, tmp_path: Path) -> None:
    s, out, total = stack, tmp_path / "out.jsonl", 8_000
    df_id = steady(s, out, total)
    before = s.api.devices()
    s.brokers.kill("mosquitto")
    outage(8.0)  # well past the lost threshold (3 s here): liveness must pause, not judge
    s.brokers.restart("mosquitto")
    converged(s, df_id, out, total, before)
    spooled(s, df_id, "gen")  # the MQTT edge's source went on into its spool meanwhile


def test_nats_killed_and_back(stack: Stack, tmp_path: Path) -> None:
    """The fog -> cloud edge runs over NATS (JetStream): it resumes by itself."""
    s, out, total = stack, tmp_path / "out.jsonl", 8_000
    df_id = steady(s, out, total)
    transports = {(e["from"], e["to"]): e["transport"] for e in s.api.dataflow(df_id)["edges"]}
    assert "nats" in transports.values(), transports
    before = s.api.devices()
    s.brokers.kill("nats")
    outage(5.0)
    s.brokers.restart("nats")
    converged(s, df_id, out, total, before)
    spooled(s, df_id, "count")  # the NATS edge's producer went on into its spool meanwhile
