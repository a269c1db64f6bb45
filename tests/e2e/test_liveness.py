"""Missed heartbeats: an agent killed with -9 goes unreachable, then lost."""

from __future__ import annotations

import time
from typing import Any

import pytest

from echo_cli.devstack.platform import AgentSpec
from tests.conftest import THREE_TIERS, PlatformFactory
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_killed_agent_goes_unreachable_then_lost(platform_factory: PlatformFactory) -> None:
    fleet = (*THREE_TIERS, AgentSpec("edge-9", "edge", labels=(("site", "b"),)))
    platform, api = platform_factory(fleet)
    dev = api.devices()["edge-9"]
    assert dev["status"] == "online"
    assert dev["labels"] == {"site": "b"} and dev["tier"] == "edge"
    # what one core of its agent forwards, measured at start (placement's processing term)
    assert dev["capacity"]["records_per_s"] >= 1_000, dev["capacity"]

    # online from its hello; its usage comes with its heartbeats (the next one under load)
    def with_usage() -> dict[str, Any] | None:
        d: dict[str, Any] = api.devices()["edge-9"]
        return d if d["cpu_percent"] is not None else None

    dev = wait_until(with_usage, timeout=10, what="edge-9's usage in a heartbeat")
    assert dev["cpu_percent"] is not None and dev["memory_percent"] is not None

    platform.agents["edge-9"].kill()
    killed = time.time()
    seen: list[str] = []

    def status() -> str:
        s = str(api.devices()["edge-9"]["status"])
        if not seen or seen[-1] != s:
            seen.append(s)
        return s

    wait_until(lambda: status() == "lost", timeout=15, what="edge-9 lost")
    assert seen == ["online", "unreachable", "lost"] or seen == ["unreachable", "lost"], seen
    lost_at = time.time() - killed
    assert lost_at >= 2.5, f"lost after {lost_at:.1f}s, before the 3 s grace period"
    # the others are unaffected
    assert all(d["status"] == "online" for i, d in api.devices().items() if i != "edge-9")

    r = api.http.get("/api/v1/devices/edge-9")
    assert r.status_code == 200 and r.json()["status"] == "lost"
    assert api.http.get("/api/v1/devices/nope").status_code == 404


def test_agent_that_returns_is_online_again(platform_factory: PlatformFactory) -> None:
    fleet = (*THREE_TIERS, AgentSpec("edge-9", "edge"))
    platform, api = platform_factory(fleet)
    platform.agents["edge-9"].kill()
    wait_until(lambda: api.devices()["edge-9"]["status"] != "online", timeout=10, what="edge-9 offline")
    platform.start_agent(AgentSpec("edge-9", "edge"))
    wait_until(lambda: api.devices()["edge-9"]["status"] == "online", timeout=15, what="edge-9 online again")
