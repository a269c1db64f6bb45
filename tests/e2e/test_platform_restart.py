"""A platform stopped and started again resumes the dataflows that were running."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_cli.devstack import wait_for_port
from tests.conftest import THREE_TIERS, PlatformFactory
from tests.harness.specs import three_tiers
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_running_dataflow_resumes_after_a_full_restart(
    platform_factory: PlatformFactory, tmp_path: Path
) -> None:
    platform, api = platform_factory()
    out = tmp_path / "out.jsonl"
    df_id = api.submit(three_tiers("long", out, count=10_000_000, rate=500))
    api.wait_state(df_id, "running")
    wait_until(lambda: out.exists() and out.stat().st_size > 0, what="records reaching the sink")

    codes = platform.stop()
    assert all(c == 0 for c in codes.values()), codes
    size = out.stat().st_size

    # the same platform (namespace, brokers, Redis) started again, agents included
    platform.start(THREE_TIERS)
    wait_for_port(platform.host, platform.api_port)
    wait_until(lambda: out.stat().st_size > size + 1000, timeout=30, what="the sink growing again")
    df = api.wait_state(df_id, "running")
    assert all(t["state"] == "running" for t in df["tasks"])
