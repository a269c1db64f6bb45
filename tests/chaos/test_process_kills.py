"""Services killed (-9) and restarted under steady flow, an agent frozen (SIGSTOP) below and
above the lost threshold: nothing lost or duplicated at the sink, counts intact, the
dataflow completes, every process alive; no device falsely declared lost."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from echo_cli.devstack.processes import ManagedProcess
from tests.chaos.conftest import Stack
from tests.chaos.test_broker_outages import converged, outage, steady
from tests.e2e.test_migration import check_exactly_once, task
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


@contextlib.contextmanager
def frozen(agent: ManagedProcess) -> Iterator[None]:
    """The agent stopped (SIGSTOP: no heartbeat, no data, its state kept) for the block."""
    agent.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        agent.signal(signal.SIGCONT)


def test_an_agent_frozen_below_the_lost_threshold(stack: Stack, tmp_path: Path) -> None:
    """SIGSTOP for 2 s (lost after 3 s): it may look unreachable, it is not lost, nothing
    fails over, and the flow goes on from where it stopped."""
    s, out, total = stack, tmp_path / "out.jsonl", 6_000
    df_id = steady(s, out, total)
    fog = task(s.api, df_id, "count")["device"]
    with frozen(s.platform.agents[fog]):
        outage(2.0)
    wait_until(lambda: s.api.devices()[fog]["status"] == "online", timeout=15, what=f"{fog} online again")
    s.api.wait_state(df_id, "completed", timeout=120)

    check_exactly_once(out, total)
    assert task(s.api, df_id, "count")["device"] == fog
    assert s.api.http.get("/api/v1/migrations", params={"dataflow": df_id}).json() == []
    assert s.api.devices()[fog]["status"] == "online"


def test_an_agent_frozen_above_the_lost_threshold(stack: Stack, tmp_path: Path) -> None:
    """SIGSTOP until its task failed over, and 1 s more (lost after 3 s): the task moves to
    the other fog device from its checkpoint; when the frozen agent wakes up, its stale copy
    is fenced: still exactly once."""
    s, out, total = stack, tmp_path / "out.jsonl", 6_000
    df_id = steady(s, out, total)
    fog = task(s.api, df_id, "count")["device"]
    with frozen(s.platform.agents[fog]):
        wait_until(lambda: task(s.api, df_id, "count")["device"] != fog, timeout=30, what="the failover")
        outage(1.0)
    wait_until(lambda: s.api.devices()[fog]["status"] == "online", timeout=30, what=f"{fog} back")
    s.api.wait_state(df_id, "completed", timeout=120)

    check_exactly_once(out, total)
    for name, p in {**s.platform.services, **s.platform.agents}.items():
        assert p.alive(), f"{name} exited: {p.log_tail()}"
