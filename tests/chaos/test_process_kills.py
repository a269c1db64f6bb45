"""Services killed (-9) and restarted under steady flow, an agent frozen (SIGSTOP) below and
above the lost threshold: nothing lost or duplicated at the sink, counts intact, the
dataflow completes, every process alive; no device falsely declared lost."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.chaos.conftest import Stack
from tests.chaos.test_broker_outages import converged, outage, steady
from tests.e2e.test_migration import check_exactly_once
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "service", ["master", "registry", pytest.param("scheduler", marks=pytest.mark.slow), "migrator"]
)
def test_a_service_killed_and_back(stack: Stack, tmp_path: Path, service: str) -> None:
    s, out, total = stack, tmp_path / "out.jsonl", 6_000
    df_id = steady(s, out, total)
    before = s.api.devices()
    s.platform.services[service].kill()
    outage(2.0)  # past the unreachable threshold (1 s): a dead registry must not make that count
    s.platform.services[service] = s.platform.start_service(service)
    if service == "master":
        s.platform.wait_api()
    converged(s, df_id, out, total, before)


def test_an_agent_frozen_below_the_lost_threshold(stack: Stack, tmp_path: Path) -> None:
    """SIGSTOP for 2 s (lost after 3 s): it may look unreachable, it is not lost, nothing
    fails over, and the flow goes on from where it stopped."""
    s, out, total = stack, tmp_path / "out.jsonl", 6_000
    df_id = steady(s, out, total)
    fog = next(t for t in s.api.dataflow(df_id)["tasks"] if t["id"] == "count")["device"]
    agent = s.platform.agents[fog]
    agent.signal(signal.SIGSTOP)
    try:
        outage(2.0)
    finally:
        agent.signal(signal.SIGCONT)
    wait_until(lambda: s.api.devices()[fog]["status"] == "online", timeout=15, what=f"{fog} online again")
    s.api.wait_state(df_id, "completed", timeout=120)

    check_exactly_once(out, total)
    assert next(t for t in s.api.dataflow(df_id)["tasks"] if t["id"] == "count")["device"] == fog
    assert s.api.http.get("/api/v1/migrations", params={"dataflow": df_id}).json() == []
    assert s.api.devices()[fog]["status"] == "online"


def test_an_agent_frozen_above_the_lost_threshold(stack: Stack, tmp_path: Path) -> None:
    """SIGSTOP for 6 s (lost after 3 s): its task fails over to the other fog device from its
    checkpoint; when the frozen agent wakes up, its stale copy is fenced: still exactly once."""
    s, out, total = stack, tmp_path / "out.jsonl", 6_000
    df_id = steady(s, out, total)
    fog = next(t for t in s.api.dataflow(df_id)["tasks"] if t["id"] == "count")["device"]
    agent = s.platform.agents[fog]
    agent.signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: next(t for t in s.api.dataflow(df_id)["tasks"] if t["id"] == "count")["device"] != fog,
            timeout=30,
            what="the task failed over",
        )
        outage(1.0)
    finally:
        agent.signal(signal.SIGCONT)
    wait_until(lambda: s.api.devices()[fog]["status"] == "online", timeout=30, what=f"{fog} back")
    s.api.wait_state(df_id, "completed", timeout=120)

    check_exactly_once(out, total)
    for name, p in {**s.platform.services, **s.platform.agents}.items():
        assert p.alive(), f"{name} exited: {p.log_tail()}"
