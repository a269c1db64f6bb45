"""DELETE stops every task on every device."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PlatformFactory
from tests.harness.specs import three_tiers
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_stop_removes_every_task_from_every_agent(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    _platform, api = platform_factory()
    out = tmp_path / "out.jsonl"
    df_id = api.submit(three_tiers("endless", out, count=10_000_000, rate=200))
    api.wait_state(df_id, "running")
    wait_until(lambda: all(d["tasks"] == 1 for d in api.devices().values()), what="one task per device")
    wait_until(lambda: out.exists() and out.stat().st_size > 0, what="records reaching the sink")

    r = api.http.delete(f"/api/v1/dataflows/{df_id}")
    assert r.status_code in (200, 202), r.text
    df = api.wait_state(df_id, "stopped")
    assert df["desired"] == "stopped"
    assert all(t["state"] == "stopped" for t in df["tasks"])

    # every agent reports no task any more (heartbeats carry what each agent runs)
    def no_tasks() -> bool:
        counts = {i: (d["tasks"], d["status"], d["last_heartbeat"]) for i, d in api.devices().items()}
        assert all(c[0] == 0 for c in counts.values()), counts
        return True

    wait_until(no_tasks, what="no task on any agent")
    size = out.stat().st_size
    # nothing is written after the stop: the next heartbeats (every 0.2 s) prove the agents are
    # alive and idle; the file must not have grown meanwhile
    before = {d: v["last_heartbeat"] for d, v in api.devices().items()}
    wait_until(
        lambda: all(v["last_heartbeat"] > before[d] + 0.4 for d, v in api.devices().items()),
        what="two more heartbeats from every agent",
    )
    assert out.stat().st_size == size

    # a second DELETE is harmless
    r = api.http.delete(f"/api/v1/dataflows/{df_id}")
    assert r.status_code == 200 and r.json()["state"] == "stopped"


def test_delete_unknown_dataflow_is_404(platform_factory: PlatformFactory) -> None:
    _platform, api = platform_factory()
    r = api.http.delete("/api/v1/dataflows/df-nope")
    assert r.status_code == 404
    assert "df-nope" in r.json()["detail"]
