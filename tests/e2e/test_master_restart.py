"""The master killed with -9 in the middle of a deployment, then restarted: the dataflow runs."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from echo_cli.devstack import wait_for_port
from tests.conftest import PlatformFactory
from tests.harness.specs import three_tiers
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_master_killed_mid_deploy_recovers(platform_factory: PlatformFactory, tmp_path: Path) -> None:
    platform, api = platform_factory()
    out = tmp_path / "out.jsonl"
    # freeze the device of the sink: the deployment starts (sinks first) and cannot finish
    platform.agents["cloud-1"].signal(signal.SIGSTOP)
    try:
        df_id = api.submit(three_tiers("interrupted", out, count=2000))

        def mid_deploy() -> bool:
            df = api.dataflow(df_id)
            states = {t["id"]: t["state"] for t in df["tasks"]}
            # gen and pass are deployed, the sink's deploy waits for the frozen agent (gen may
            # be done already: its records wait at pass, whose output waits for the sink)
            return (
                df["state"] == "deploying"
                and states["gen"] in ("running", "finished")
                and states["pass"] == "running"
                and states["sink"] == "deploying"
            )

        wait_until(mid_deploy, what="a deployment half done")
        platform.services["master"].kill()
    finally:
        platform.agents["cloud-1"].signal(signal.SIGCONT)
    master = platform.start_service("master")
    wait_for_port(platform.host, platform.api_port, proc=master)
    df = api.wait_state(df_id, "completed", timeout=60)
    assert {t["state"] for t in df["tasks"]} == {"finished"}
    seqs = [orjson.loads(line)["seq"] for line in out.read_bytes().splitlines()]
    assert seqs == list(range(2000))
