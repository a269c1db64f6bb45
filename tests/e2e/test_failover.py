"""Failover and fencing with real processes: nothing lost, nothing duplicated.

``io.generate`` (1,000 records/s, one key) -> ``stats.count_by_key`` -> ``io.file_sink``,
the counting task on a fog agent that is killed with -9 (its task restores its latest
periodic checkpoint elsewhere, the source replays what came after it), or frozen for
longer than the grace period and then thawed (its stale copy is fenced and never writes
again). The sink must hold every seq exactly once, with the count of seq i equal to i + 1.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from echo_cli.devstack.platform import AgentSpec
from tests.conftest import PlatformFactory
from tests.e2e.test_migration import FLEET, FOGS, check_exactly_once, counting, task
from tests.harness.api import Api
from tests.harness.otlp import OtlpReceiver
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def migrations_of(api: Api, df_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = api.http.get("/api/v1/migrations", params={"dataflow": df_id}).json()
    return out


def failed_over(api: Api, df_id: str, source: str) -> dict[str, Any] | None:
    """The failover of ``count`` off ``source``, once it completed."""
    for m in migrations_of(api, df_id):
        if m["origin"] == "failover" and m["task"] == "count" and m["source"] == source:
            assert m["state"] in ("pending", "running", "completed"), m
            return m if m["state"] == "completed" else None
    return None


def test_agent_killed_the_task_restores_its_checkpoint_elsewhere(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory(FLEET)
    out = tmp_path / "counts.jsonl"
    total = 12_000
    df_id = api.submit(counting(out, total))
    api.wait_state(df_id, "running", timeout=30)
    victim = task(api, df_id, "count")["device"]
    assert victim in FOGS
    # let it run and checkpoint a few times, then kill its agent
    wait_until(
        lambda: task(api, df_id, "count")["records_in"] >= 3_000, timeout=30, what="3,000 records counted"
    )
    platform.agents[victim].kill()

    m = wait_until(
        lambda: failed_over(api, df_id, victim), timeout=30, what=f"count failed over off {victim}"
    )
    assert m["target"] in FOGS and m["target"] != victim, m
    assert [s["name"] for s in m["steps"]] == ["place", "restore", "resume"], m
    assert "checkpoint" in m["steps"][1]["detail"], m
    assert task(api, df_id, "count")["device"] == m["target"]
    # the victim comes back: its agent resumes the copy of count it kept on disk, which is
    # stale now; the master fences it, and it writes nothing
    platform.start_agent(next(s for s in FLEET if s.device_id == victim))
    log = platform.logs / f"agent-{victim}.log"
    wait_until(
        lambda: "resumed from its checkpoint" in log.read_text(), timeout=30, what="the stale copy resumed"
    )
    wait_until(lambda: api.devices()[victim]["status"] == "online", timeout=30, what=f"{victim} back")
    api.wait_state(df_id, "completed", timeout=60)
    check_exactly_once(out, total)
    wait_until(
        lambda: api.devices()[victim]["tasks"] == 0, timeout=15, what=f"the stale copy on {victim} fenced"
    )
    kept = platform.workdir / "agents" / victim / ".tasks"
    wait_until(
        lambda: not any(kept.glob("*/*/desired.json")),
        timeout=15,
        what="the fenced copy no longer kept on the device",
    )


def test_a_device_cut_off_past_the_grace_period_is_fenced_when_it_returns(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory(FLEET)
    out = tmp_path / "counts.jsonl"
    total = 15_000
    df_id = api.submit(counting(out, total))
    api.wait_state(df_id, "running", timeout=30)
    cut = task(api, df_id, "count")["device"]
    wait_until(
        lambda: task(api, df_id, "count")["records_in"] >= 3_000, timeout=30, what="3,000 records counted"
    )
    pid = platform.agents[cut].pid
    os.kill(pid, signal.SIGSTOP)  # cut off: no heartbeat, no data, the process keeps its state
    try:
        wait_until(lambda: api.devices()[cut]["status"] == "lost", timeout=20, what=f"{cut} lost")
        m = wait_until(lambda: failed_over(api, df_id, cut), timeout=30, what=f"count failed over off {cut}")
    finally:
        os.kill(pid, signal.SIGCONT)  # back, with its stale copy of count
    wait_until(lambda: api.devices()[cut]["status"] == "online", timeout=20, what=f"{cut} back online")
    assert task(api, df_id, "count")["device"] == m["target"] != cut
    api.wait_state(df_id, "completed", timeout=60)
    check_exactly_once(out, total)
    # the stale copy was stopped (fenced): the device runs no task any more
    wait_until(lambda: api.devices()[cut]["tasks"] == 0, timeout=15, what=f"the stale copy on {cut} stopped")


OVERLOAD_FLEET = (
    AgentSpec("cloud-1", "cloud", cpu=8.0, memory_mb=8192),
    AgentSpec("fog-1", "fog", cpu=0.5, memory_mb=2048),
    AgentSpec("fog-2", "fog", cpu=0.5, memory_mb=2048),
)
OVERLOAD_ENV = {
    "ECHO_REBALANCE_ENABLED": "true",
    "ECHO_UTILISATION": "agent",  # each agent reports its own load against its declared CPU
    "ECHO_OVERLOAD_CPU_PERCENT": "60",
    "ECHO_OVERLOAD_WINDOW": "2",
    "ECHO_OVERLOAD_COOLDOWN": "600",
    "ECHO_REBALANCE_PERIOD": "0.5",
}


def test_an_overloaded_device_gets_a_task_moved_off_it_once(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    """... once, and the decision is a trace with the move inside it."""
    with OtlpReceiver() as otlp:
        overloaded_device(platform_factory, tmp_path, otlp)


def overloaded_device(platform_factory: PlatformFactory, tmp_path: Path, otlp: OtlpReceiver) -> None:
    env = {**OVERLOAD_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    _platform, api = platform_factory(OVERLOAD_FLEET, env=env)
    # a flow that keeps the relay busy until the test deletes it (stream edges carry ~250 k
    # records/s: a finite one would end before the overload is judged); nothing written to disk
    total = 10**9
    df_id = api.submit(
        {
            "name": "hot",
            "tasks": [
                {
                    "id": "gen",
                    "operator": "io.generate",
                    "config": {"count": total, "rate": 0},
                    "placement": {"device": "cloud-1"},
                },
                {"id": "pass", "operator": "core.passthrough", "placement": {"tier": "fog"}},
                {
                    "id": "sink",
                    "operator": "io.log_sink",
                    "config": {"every": 10**6},
                    "placement": {"device": "cloud-1"},
                },
            ],
            "edges": [{"from": "gen", "to": "pass"}, {"from": "pass", "to": "sink"}],
        }
    )
    api.wait_state(df_id, "running", timeout=30)
    hot = task(api, df_id, "pass")["device"]

    def decisions() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = api.http.get("/api/v1/rebalancing/decisions").json()
        return got

    def moved() -> list[dict[str, Any]] | None:
        d = [x for x in decisions() if x["action"] == "migrate"]
        return d or None

    first = wait_until(moved, timeout=40, what="a task moved off the overloaded device")
    assert len(first) == 1 and first[0]["device"] == hot and first[0]["task"] == "pass", first
    assert "cpu_percent" in first[0]["reason"], first
    m = wait_until(
        lambda: (
            (x := api.http.get(f"/api/v1/migrations/{first[0]['migration']}").json())["state"]
            in ("completed", "failed", "rolled_back")
            and x
        ),
        timeout=40,
        what="the overload migration to end",
    )
    assert m["state"] == "completed" and m["origin"] == "overload", m
    # the decision is one trace: its root span, the move's saga steps inside it
    assert first[0]["trace_id"] and m["trace_id"] == first[0]["trace_id"], (first, m)

    def decision_trace() -> set[str] | None:
        names = {s.name for s in otlp.snapshot() if s.trace_id == first[0]["trace_id"]}
        wanted = {f"rebalance decision {hot}", "migration step drain", "migration step resume"}
        return names if wanted <= names else None

    wait_until(decision_trace, timeout=30, what="the rebalance decision's trace with its move")
    other = m["target"]
    # the task now heats the other device; it has just moved (cool-down): nothing moves again,
    # and the rebalancer says so
    wait_until(
        lambda: [x for x in decisions() if x["device"] == other] or None,
        timeout=40,
        what=f"a decision about {other}",
    )
    assert len([x for x in decisions() if x["action"] == "migrate"]) == 1, decisions()
    r = api.http.delete(f"/api/v1/dataflows/{df_id}")
    assert r.status_code in (200, 202), r.text
