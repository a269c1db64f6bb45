"""Service restarts and operator mistakes do not corrupt the cluster's view."""

from __future__ import annotations

import time

import pytest

from echo_cli.devstack.platform import AgentSpec
from tests.conftest import PlatformFactory
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e


def test_registry_outage_does_not_make_devices_unreachable(platform_factory: PlatformFactory) -> None:
    platform, api = platform_factory()
    before = api.devices()
    platform.services["registry"].kill()
    down_at = time.time()
    # the outage must outlast the unreachable threshold (1 s in tests) to mean anything
    wait_until(lambda: time.time() > down_at + 2.0, what="an outage longer than the threshold")
    platform.start_service("registry")
    restarted = time.time()

    def fresh() -> dict[str, dict[str, object]] | None:
        devs = api.devices()
        return devs if all(float(d["last_heartbeat"]) > restarted + 0.5 for d in devs.values()) else None

    after = wait_until(fresh, timeout=20, what="heartbeats seen by the new registry")
    for dev_id, dev in after.items():
        assert dev["status"] == "online"
        assert dev["status_since"] == before[dev_id]["status_since"], f"{dev_id} changed status meanwhile"


def test_a_second_agent_with_the_same_device_id_gives_up(platform_factory: PlatformFactory) -> None:
    platform, api = platform_factory()
    first = platform.agents["fog-1"]
    second = platform.start_agent(AgentSpec("fog-1", "fog"))
    wait_until(lambda: not first.alive() or not second.alive(), timeout=20, what="one of the twins to exit")
    loser = first if not first.alive() else second
    winner = second if loser is first else first
    assert loser.returncode not in (0, None)
    assert "already taken by another agent" in loser.log_tail()
    assert winner.alive()
    platform.agents["fog-1"] = winner
    wait_until(lambda: api.devices()["fog-1"]["status"] == "online", what="fog-1 online")
